import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, describe, test } from 'node:test';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { UpstreamTarget } from '../../../src/core/upstream.js';
import { isProxyError } from '../../../src/errors.js';
import { createLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import { createUpstreamConnector } from '../../../src/protocols/imap/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { withDeadline } from '../../helpers/deadline.js';
import {
  type FakeUpstream,
  type FakeUpstreamOptions,
  startFakeUpstream,
} from '../../helpers/fake-upstream.js';

// The fake stands in for Gmail and Microsoft 365, whose failure shapes no local server produces.

const USER = 'alice@example.com';
const GOOD = 'good-token';

function target(fake: FakeUpstream, over: Partial<UpstreamTarget> = {}): UpstreamTarget {
  return resolveUpstream('imap', {
    host: fake.host,
    port: fake.port,
    tls: fake.options.tls,
    ca_file: fake.caFile,
    connect_timeout_seconds: 5,
    auth_timeout_seconds: 5,
    ...over,
  });
}

describe('upstream connector against the scripted fake', () => {
  const fakes: FakeUpstream[] = [];
  let logText = '';
  const logStream = new PassThrough();
  logStream.on('data', (d: Buffer) => {
    logText += d.toString();
  });
  const metrics = createMetrics({ defaults: false });
  const connector = createUpstreamConnector({
    metrics,
    log: createLogger({ level: 'trace', destination: logStream }),
  });
  const labels = { provider: 'fake' };

  async function fake(o: Partial<FakeUpstreamOptions> = {}): Promise<FakeUpstream> {
    const f = await startFakeUpstream({ accept: new Set([GOOD]), ...o });
    fakes.push(f);
    return f;
  }
  after(async () => {
    await Promise.all(fakes.map((f) => f.close()));
  });

  test('SASL-IR advertised: the blob goes on the AUTHENTICATE line, byte-exact; post-login caps returned', async () => {
    const f = await fake({ saslIr: true });
    const conn = await connector.connect(target(f), labels);
    assert.ok(conn.capabilities.includes('SASL-IR'));
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [`A1 AUTHENTICATE XOAUTH2 ${xoauth2Blob(USER, GOOD)}`]);
    assert.deepEqual(up.capabilities, ['IMAP4rev1', 'LITERAL+', 'IDLE', 'NAMESPACE', 'UIDPLUS', 'MOVE']);
    assert.equal(conn.reusable, false);
    up.socket.destroy();
  });

  test('no SASL-IR: AUTHENTICATE alone, the blob only after the server’s "+"', async () => {
    const f = await fake({ saslIr: false });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, ['A1 AUTHENTICATE XOAUTH2', xoauth2Blob(USER, GOOD)]);
    up.socket.destroy();
  });

  test('OAUTHBEARER when configured, with host and port of the target', async () => {
    const f = await fake();
    const conn = await connector.connect(target(f, { mechanism: 'oauthbearer' }), labels);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [
      `A1 AUTHENTICATE OAUTHBEARER ${oauthbearerBlob(USER, GOOD, f.host, f.port)}`,
    ]);
    up.socket.destroy();
  });

  test('Gmail shape: "+ <base64 JSON>" is answered with an empty line, rejected, and one retry on the same connection works', async () => {
    const f = await fake({ reject: 'gmail' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'stale-token'), {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received[1], '', 'XOAUTH2 failure continuation answered with an empty line');
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    assert.equal(f.received[2], `A2 AUTHENTICATE XOAUTH2 ${xoauth2Blob(USER, GOOD)}`);
    assert.equal(f.connections, 1);
    up.socket.destroy();
  });

  test('OAUTHBEARER failure continuation is answered with a single 0x01 (AQ==)', async () => {
    const f = await fake({ reject: 'gmail', mechanisms: ['OAUTHBEARER'] });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'bad'), {
      reason: 'upstream_rejected',
      detail: 'json_invalid_token',
    });
    assert.match(f.received[0] ?? '(nothing received)', /^A1 AUTHENTICATE OAUTHBEARER /);
    assert.equal(f.received[1], 'AQ==');
    conn.destroy();
  });

  test('Microsoft shape: immediate NO → upstream_rejected, connection reusable', async () => {
    const f = await fake({ reject: 'microsoft', mechanisms: ['XOAUTH2'] });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'bad'), { reason: 'upstream_rejected', detail: 'no' });
    assert.equal(f.received.length, 1);
    assert.equal(conn.reusable, true);
    conn.destroy();
    assert.equal(conn.reusable, false);
  });

  test('Microsoft "authenticated but not connected": the probe turns it into authorization_failed with a hint', async () => {
    const f = await fake({ notConnected: true });
    const conn = await connector.connect(target(f, { post_login_probe: true }), labels);
    const err = await conn.authenticate(USER, GOOD).then(
      () => assert.fail('must not succeed'),
      (e: unknown) => e,
    );
    assert.ok(isProxyError(err));
    assert.equal(err.reason, 'authorization_failed');
    assert.match(err.clientText ?? '', /Add-MailboxPermission/);
    assert.equal(f.received[1], 'A2 NOOP');
    // Without the probe the broken session would be handed to the client.
    const conn2 = await connector.connect(target(f, { post_login_probe: false }), labels);
    const up = await conn2.authenticate(USER, GOOD);
    up.socket.destroy();
  });

  test('throttling reply → upstream_unavailable (throttled)', async () => {
    const f = await fake({ reject: 'throttle' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), {
      reason: 'upstream_unavailable',
      detail: 'throttled',
    });
    conn.destroy();
  });

  test('upstream closes mid-auth → upstream_unavailable, not reusable', async () => {
    const f = await fake({ reject: 'close' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'upstream_unavailable' });
    assert.equal(conn.reusable, false);
    await assert.rejects(conn.authenticate(USER, GOOD), {
      reason: 'upstream_unavailable',
      detail: 'not_reusable',
    });
  });

  test('upstream never answers AUTHENTICATE → timeout after auth_timeout_seconds', async () => {
    const f = await fake({ reject: 'hang' });
    const conn = await connector.connect(target(f, { auth_timeout_seconds: 0.3 }), labels);
    const t0 = Date.now();
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'timeout' });
    assert.ok(Date.now() - t0 < 2000);
    assert.equal(conn.reusable, false);
  });

  test('a server that never greets → timeout within connect_timeout_seconds', async () => {
    const f = await fake({ greetingDelayMs: 'never' });
    const t0 = Date.now();
    await assert.rejects(connector.connect(target(f, { connect_timeout_seconds: 0.3 }), labels), {
      reason: 'timeout',
    });
    assert.ok(Date.now() - t0 < 2000);
  });

  test('a slow greeting within the timeout still connects', async () => {
    const f = await fake({ greetingDelayMs: 150 });
    const conn = await connector.connect(target(f), labels);
    assert.ok(conn.capabilities.includes('IMAP4rev1'));
    conn.destroy();
  });

  test('a 12 KB token goes through whole (no line limit cuts it)', async () => {
    const big = 'eyJ'.padEnd(12 * 1024, 'x');
    const f = await fake({ accept: new Set([big]), saslIr: false });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, big);
    assert.equal(f.received[1], xoauth2Blob(USER, big));
    assert.ok(f.received[1].length > 16_000);
    up.socket.destroy();
  });

  test('login OK without [CAPABILITY]: capabilities come from a CAPABILITY command', async () => {
    const f = await fake({ capabilityInLoginOk: false, capabilityInGreeting: false });
    const conn = await connector.connect(target(f), labels);
    assert.ok(conn.capabilities.includes('AUTH=XOAUTH2'));
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [
      'C1 CAPABILITY',
      `A1 AUTHENTICATE XOAUTH2 ${xoauth2Blob(USER, GOOD)}`,
      'A2 CAPABILITY',
    ]);
    assert.ok(up.capabilities.includes('MOVE'));
    up.socket.destroy();
  });

  test('bytes upstream sent after its OK are handed over; the socket is paused with no reader', async () => {
    const f = await fake({ afterLoginOk: '* 3 EXISTS\r\n' });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, GOOD);
    // The fake writes OK and the extra line in one write, so they arrive together.
    assert.equal(up.buffered.toString(), '* 3 EXISTS\r\n');
    assert.equal(up.socket.isPaused(), true);
    assert.equal(up.socket.listenerCount('data'), 0);
    up.socket.write('Z1 NOOP\r\n');
    up.socket.resume();
    const reply = await withDeadline(
      new Promise<string>((r) => up.socket.once('data', (d: Buffer) => r(d.toString()))),
      5000,
      'the NOOP reply',
    );
    assert.equal(reply, 'Z1 OK NOOP completed\r\n');
    up.socket.destroy();
  });

  test('STARTTLS upstream: upgrade, then capabilities re-read over TLS', async () => {
    const f = await fake({ tls: 'starttls' });
    const conn = await connector.connect(target(f), labels);
    assert.ok(conn.capabilities.includes('AUTH=XOAUTH2'), 'post-TLS capabilities, not the cleartext ones');
    assert.ok(!conn.capabilities.includes('LOGINDISABLED'));
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(0, 2), ['S1 STARTTLS', 'C1 CAPABILITY']);
    assert.equal((up.socket as import('node:tls').TLSSocket).encrypted, true);
    up.socket.destroy();
  });

  test('metrics count connects and auths by result; logs never contain the token or the blob', async () => {
    const text = await metrics.registry.metrics();
    assert.match(
      text,
      /imap_proxy_upstream_auths_total\{protocol="imap",provider="fake",mechanism="xoauth2",result="success"\} \d+/,
    );
    assert.match(
      text,
      /imap_proxy_upstream_auths_total\{protocol="imap",provider="fake",mechanism="xoauth2",result="upstream_rejected"\} 2/,
    );
    assert.match(text, /result="authorization_failed"\} 1/);
    assert.match(
      text,
      /imap_proxy_upstream_connects_total\{protocol="imap",provider="fake",result="timeout"\} 1/,
    );
    assert.match(
      text,
      /imap_proxy_upstream_connect_duration_seconds_count\{protocol="imap",provider="fake"\} \d+/,
    );
    assert.ok(logText.includes('upstream auth failed'), 'logs were captured');
    for (const secret of [GOOD, 'stale-token', xoauth2Blob(USER, GOOD)])
      assert.ok(!logText.includes(secret), secret);
  });
});
