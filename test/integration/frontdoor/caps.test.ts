import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PreauthGate } from '../../../src/net/gate.js';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { CLEAR_GREETING, goodbye, metricValue, startCleartext } from './harness.js';

// Unauthenticated connections are bounded per address and in total, may not live for ever, and
// an address the limiter locked is closed at accept: one address cannot fill the listeners.

const GREETING = CLEAR_GREETING;
const GOODBYE = goodbye;
const start = startCleartext;
const LOGIN: Record<string, string> = {
  imap: 'a LOGIN alice pw',
  smtp: `AUTH PLAIN ${Buffer.from('\0alice\0pw').toString('base64')}`,
  pop3: 'USER alice\r\nPASS pw',
};

async function greeted(port: number, protocol: string): Promise<RawImapClient> {
  const c = await RawImapClient.connect(port);
  assert.equal(await c.readLine(), GREETING[protocol]);
  return c;
}

for (const protocol of ['imap', 'smtp', 'pop3'] as const) {
  describe(`${protocol}: connections not yet logged in are bounded`, () => {
    test('per address: past the bound a connection gets the goodbye at once; a place frees on login or close', async (t) => {
      const gate = new PreauthGate({ perAddress: 2, total: 100 });
      const fd = await start(protocol, t, { gate });
      const a = await greeted(fd.port, protocol);
      const b = await greeted(fd.port, protocol);
      const c = await RawImapClient.connect(fd.port);
      assert.equal(
        await c.readToClose(),
        GOODBYE(protocol, 'Too many connections from your address; try again later'),
      );
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
          protocol,
          reason: 'too_many_from_address',
        }),
        1,
      );
      // A login hands its place back.
      a.write(`${LOGIN[protocol]}\r\n`);
      await until(() => gate.unauthenticated === 1, 5000, 'the logged-in connection to leave the count');
      const d = await greeted(fd.port, protocol);
      // So does a close.
      b.close();
      await until(() => gate.unauthenticated === 1, 5000, 'the closed connection to leave the count');
      const e = await greeted(fd.port, protocol);
      for (const x of [a, d, e]) x.close();
      await until(() => gate.unauthenticated === 0, 5000, 'every place given back');
    });

    test('in total: past the bound every address is told to come back later', async (t) => {
      const gate = new PreauthGate({ perAddress: 100, total: 1 });
      const fd = await start(protocol, t, { gate });
      const a = await greeted(fd.port, protocol);
      const b = await RawImapClient.connect(fd.port);
      assert.equal(await b.readToClose(), GOODBYE(protocol, 'Too many connections; try again later'));
      a.close();
      await until(() => gate.unauthenticated === 0, 5000, 'the place given back');
      (await greeted(fd.port, protocol)).close();
    });

    test('a connection that keeps talking without logging in is closed after the pre-auth lifetime', async (t) => {
      const fd = await start(protocol, t, { limits: { preauthLifetimeMs: 400, preauthCommands: 1000 } });
      const c = await greeted(fd.port, protocol);
      const noop = protocol === 'imap' ? 'x NOOP' : protocol === 'smtp' ? 'NOOP' : 'CAPA';
      const t0 = Date.now();
      const timer = setInterval(() => c.write(`${noop}\r\n`), 50);
      const all = await c.readToClose(5000);
      clearInterval(timer);
      assert.ok(Date.now() - t0 >= 350, 'not before the lifetime');
      assert.ok(all.endsWith(GOODBYE(protocol, 'Took too long to log in')), JSON.stringify(all.slice(-120)));
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
          protocol,
          reason: 'preauth_lifetime',
        }),
        1,
      );
    });

    test('an address the limiter locked is closed at accept, without a word or a greeting', async (t) => {
      const fd = await start(protocol, t, { refuseAddress: (a) => a === '127.0.0.1' });
      const c = await RawImapClient.connect(fd.port);
      assert.equal(await c.readToClose(), '');
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
          protocol,
          reason: 'address_locked',
        }),
        1,
      );
      assert.equal(fd.requests.length, 0);
    });
  });
}
