import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, test } from 'node:test';
import { PreauthGate } from '../../../src/net/gate.js';
import { TARPIT_OFF } from '../../../src/net/tarpit.js';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { CLEAR_GREETING, type Frontdoor, goodbye, metricValue, startCleartext } from './harness.js';

// Refused connections (a limiter-locked address, a full pre-auth bound) are held unanswered for a
// while before they are closed, so a client that reconnects at once runs at the tarpit's pace
// instead of costing an accept and a close as fast as it can loop; the tarpit itself is bounded.

const GREETING = CLEAR_GREETING;
const TOO_MANY = (protocol: string) =>
  goodbye(protocol, 'Too many connections from your address; try again later');
const LOCKED = new Set(['127.0.0.1', '127.0.0.3', '127.0.0.4']);

/** A raw client from a chosen loopback address (Linux routes all of 127/8 to lo). */
async function from(port: number, localAddress: string): Promise<RawImapClient> {
  const s = connect({ port, host: '127.0.0.1', localAddress });
  await once(s, 'connect');
  return RawImapClient.wrap(s);
}

/** Milliseconds until the server closes `c`, and what it said. */
async function timedClose(c: RawImapClient, ms = 10_000): Promise<{ ms: number; said: string }> {
  const t0 = performance.now();
  const said = await c.readToClose(ms);
  return { ms: performance.now() - t0, said };
}

/** A cleartext listener sharing `gate` and its tarpit, where the LOCKED addresses are locked. */
const start = (
  protocol: 'imap' | 'smtp' | 'pop3',
  t: Parameters<typeof startCleartext>[1],
  gate: PreauthGate,
) => startCleartext(protocol, t, { gate, tarpit: gate.tarpit, refuseAddress: (a) => LOCKED.has(a) });

const tarpitCount = (fd: Frontdoor, labels: Record<string, string>) =>
  metricValue(fd.metrics, 'imap_proxy_tarpit_connections_total', labels);

for (const protocol of ['imap', 'smtp', 'pop3'] as const) {
  describe(`${protocol}: refused connections wait in the tarpit`, () => {
    test('a locked address is held unanswered for the tarpit time, then closed without a word; other addresses are greeted at once', async (t) => {
      const gate = new PreauthGate({ perAddress: 50, total: 100 });
      gate.tarpit.configure({ holdMs: 800, perAddress: 5, total: 10 });
      const fd = await start(protocol, t, gate);
      const attacker = await from(fd.port, '127.0.0.1');
      const closed = timedClose(attacker);
      // Talking does not get it an answer or an earlier close.
      attacker.write('a LOGIN x y\r\n');
      const user = await from(fd.port, '127.0.0.2');
      assert.equal(await user.readLine(2000), GREETING[protocol]);
      user.close();
      const { ms, said } = await closed;
      assert.equal(said, '');
      assert.ok(ms >= 700, `held ${ms.toFixed(0)} ms, not the tarpit's 800`);
      assert.equal(await tarpitCount(fd, { protocol, reason: 'address_locked', result: 'held' }), 1);
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
          protocol,
          reason: 'address_locked',
        }),
        1,
      );
      await until(() => gate.tarpit.held === 0, 5000, 'the held place to be given back');
      assert.equal(fd.requests.length, 0, 'no login ran');
    });

    test('past the per-address pre-auth bound: held without a greeting, then the goodbye', async (t) => {
      const gate = new PreauthGate({ perAddress: 1, total: 100 });
      gate.tarpit.configure({ holdMs: 800, perAddress: 5, total: 10 });
      const fd = await start(protocol, t, gate);
      const first = await from(fd.port, '127.0.0.2');
      assert.equal(await first.readLine(), GREETING[protocol]);
      const second = await from(fd.port, '127.0.0.2');
      const closed = timedClose(second);
      second.write('NOOP\r\n');
      const { ms, said } = await closed;
      assert.equal(said, TOO_MANY(protocol));
      assert.ok(ms >= 700, `held ${ms.toFixed(0)} ms, not the tarpit's 800`);
      assert.equal(await tarpitCount(fd, { protocol, reason: 'too_many_from_address', result: 'held' }), 1);
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
          protocol,
          reason: 'too_many_from_address',
        }),
        1,
      );
      assert.equal(gate.unauthenticated, 1, 'the held connection never took a pre-auth place');
      first.close();
      await until(() => gate.unauthenticated === 0 && gate.tarpit.held === 0, 5000, 'every place given back');
    });
  });
}

describe('the tarpit is bounded', () => {
  test('per address and in total: past either a connection is closed at once; a client that leaves frees its place', async (t) => {
    const gate = new PreauthGate({ perAddress: 50, total: 100 });
    gate.tarpit.configure({ holdMs: 30_000, perAddress: 1, total: 2 });
    const fd = await start('imap', t, gate);
    const a = await from(fd.port, '127.0.0.1');
    await until(() => gate.tarpit.held === 1, 5000, 'the first connection to be held');
    // Same address, its bound is full: closed at once.
    const b = await timedClose(await from(fd.port, '127.0.0.1'));
    assert.ok(b.ms < 5000, `closed after ${b.ms.toFixed(0)} ms`);
    const c = await from(fd.port, '127.0.0.3');
    await until(() => gate.tarpit.held === 2, 5000, 'a second address to be held');
    // Another address, the total is full: closed at once.
    const d = await timedClose(await from(fd.port, '127.0.0.4'));
    assert.ok(d.ms < 5000, `closed after ${d.ms.toFixed(0)} ms`);
    assert.equal(await tarpitCount(fd, { reason: 'address_locked', result: 'held' }), 2);
    assert.equal(await tarpitCount(fd, { reason: 'address_locked', result: 'full' }), 2);
    assert.equal(await metricValue(fd.metrics, 'imap_proxy_tarpit_held_connections', {}), 2);
    // A client that gives up is noticed and its place freed, long before the 30 s hold ends.
    a.close();
    await until(() => gate.tarpit.held === 1, 5000, 'the place of the client that left');
    const e = await from(fd.port, '127.0.0.1');
    await until(() => gate.tarpit.held === 2, 5000, 'a new connection of that address to be held');
    // Shutdown does not wait for the tarpit.
    const closedAt = performance.now();
    await fd.listener.close({ drainMs: 0 });
    await Promise.all([c.readToClose(5000), e.readToClose(5000)]);
    assert.ok(performance.now() - closedAt < 5000);
    await until(() => gate.tarpit.held === 0, 5000, 'every held place given back at shutdown');
    assert.equal(await metricValue(fd.metrics, 'imap_proxy_tarpit_held_connections', {}), 0);
  });

  test('a reconnect loop from a locked address runs at the tarpit pace, not as fast as accept and close', async (t) => {
    const lanes = 4;
    const loopMs = 2000;
    /** Connections the loop got accepted in `loopMs` (each lane reconnects the moment it is closed). */
    const loop = async (holdMs: number) => {
      const gate = new PreauthGate({ perAddress: 50, total: 100 });
      gate.tarpit.configure(holdMs > 0 ? { holdMs, perAddress: 10, total: 100 } : TARPIT_OFF);
      const fd = await start('imap', t, gate);
      const end = performance.now() + loopMs;
      await Promise.all(
        Array.from({ length: lanes }, async () => {
          while (performance.now() < end) {
            const c = await from(fd.port, '127.0.0.1');
            await c.readToClose(loopMs + 5000);
          }
        }),
      );
      return metricValue(fd.metrics, 'imap_proxy_connections_total', {});
    };
    const held = await loop(500);
    const unheld = await loop(0);
    // Each lane waits out at most loopMs / holdMs + 1 holds.
    assert.ok(held <= lanes * (loopMs / 500 + 1), `${held} connections in ${loopMs} ms with a 500 ms tarpit`);
    assert.ok(unheld > held * 5, `without the tarpit the loop made ${unheld} connections (with it: ${held})`);
  });
});
