import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createUpstreamConnector } from '../../../src/protocols/imap/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { startFakeUpstream } from '../../helpers/fake-upstream.js';
import { connectorHarness, GOOD, USER } from '../../helpers/fake-upstream-harness.js';

// The fake stands in for Gmail and Microsoft 365, whose failure shapes no local server produces.

describe('upstream connector against the scripted fake', () => {
  const h = connectorHarness('imap', createUpstreamConnector, startFakeUpstream);
  const { connector, labels, fake, target } = h;

  test('SASL-IR advertised: the blob goes on the AUTHENTICATE line, byte-exact; post-login caps returned', async () => {
    const { f, conn } = await h.connected({ saslIr: true });
    assert.ok(conn.capabilities.includes('SASL-IR'));
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [`A1 AUTHENTICATE XOAUTH2 ${xoauth2Blob(USER, GOOD)}`]);
    assert.deepEqual(up.capabilities, ['IMAP4rev1', 'LITERAL+', 'IDLE', 'NAMESPACE', 'UIDPLUS', 'MOVE']);
    assert.equal(conn.reusable, false);
    up.socket.destroy();
  });

  test('no SASL-IR: AUTHENTICATE alone, the blob only after the server’s "+"', async () => {
    const { f, conn } = await h.connected({ saslIr: false });
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
    const { f, conn } = await h.refused({ reject: 'gmail' }, 'stale-token', {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received[1], '', 'XOAUTH2 failure continuation answered with an empty line');
    await h.assertRetriedOnSameConnection(f, conn);
    assert.equal(f.received[2], `A2 AUTHENTICATE XOAUTH2 ${xoauth2Blob(USER, GOOD)}`);
  });

  test('OAUTHBEARER failure continuation is answered with a single 0x01 (AQ==)', async () => {
    const { f, conn } = await h.refused({ reject: 'gmail', mechanisms: ['OAUTHBEARER'] }, 'bad', {
      reason: 'upstream_rejected',
      detail: 'json_invalid_token',
    });
    assert.match(f.received[0] ?? '(nothing received)', /^A1 AUTHENTICATE OAUTHBEARER /);
    assert.equal(f.received[1], 'AQ==');
    conn.destroy();
  });

  test('Microsoft shape: immediate NO → upstream_rejected, connection reusable', async () => {
    const { f, conn } = await h.refused({ reject: 'microsoft', mechanisms: ['XOAUTH2'] }, 'bad', {
      reason: 'upstream_rejected',
      detail: 'no',
    });
    assert.equal(f.received.length, 1);
    assert.equal(conn.reusable, true);
    conn.destroy();
    assert.equal(conn.reusable, false);
  });

  test('Microsoft "authenticated but not connected": the probe turns it into authorization_failed with a hint', async () => {
    const f = await fake({ notConnected: true });
    const conn = await connector.connect(target(f, { post_login_probe: true }), labels);
    const err = await h.authError(conn, GOOD);
    assert.equal(err.reason, 'authorization_failed');
    assert.match(err.clientText ?? '', /Add-MailboxPermission/);
    assert.equal(f.received[1], 'A2 NOOP');
    // Without the probe the broken session would be handed to the client.
    const conn2 = await connector.connect(target(f, { post_login_probe: false }), labels);
    const up = await conn2.authenticate(USER, GOOD);
    up.socket.destroy();
  });

  test('throttling reply → upstream_unavailable (throttled)', async () => {
    const { conn } = await h.refused({ reject: 'throttle' }, 'any', {
      reason: 'upstream_unavailable',
      detail: 'throttled',
    });
    conn.destroy();
  });

  h.sharedTests({
    close: { reject: 'close' },
    hang: { reject: 'hang' },
    silent: { greetingDelayMs: 'never' },
  });

  test('a slow greeting within the timeout still connects', async () => {
    const { conn } = await h.connected({ greetingDelayMs: 150 });
    assert.ok(conn.capabilities.includes('IMAP4rev1'));
    conn.destroy();
  });

  test('a 12 KB token goes through whole (no line limit cuts it)', async () => {
    const big = 'eyJ'.padEnd(12 * 1024, 'x');
    const { f, conn } = await h.connected({ accept: new Set([big]), saslIr: false });
    const up = await conn.authenticate(USER, big);
    assert.equal(f.received[1], xoauth2Blob(USER, big));
    assert.ok(f.received[1].length > 16_000);
    up.socket.destroy();
  });

  test('login OK without [CAPABILITY]: capabilities come from a CAPABILITY command', async () => {
    const { f, conn } = await h.connected({ capabilityInLoginOk: false, capabilityInGreeting: false });
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
    const { conn } = await h.connected({ afterLoginOk: '* 3 EXISTS\r\n' });
    const up = await conn.authenticate(USER, GOOD);
    // The fake writes OK and the extra line in one write, so they arrive together.
    assert.equal(up.buffered.toString(), '* 3 EXISTS\r\n');
    assert.equal(up.socket.isPaused(), true);
    assert.equal(up.socket.listenerCount('data'), 0);
    assert.equal(await h.rawCommand(up, 'Z1 NOOP'), 'Z1 OK NOOP completed\r\n');
    up.socket.destroy();
  });

  test('STARTTLS upstream: upgrade, then capabilities re-read over TLS', async () => {
    const { f, conn } = await h.connected({ tls: 'starttls' });
    assert.ok(conn.capabilities.includes('AUTH=XOAUTH2'), 'post-TLS capabilities, not the cleartext ones');
    assert.ok(!conn.capabilities.includes('LOGINDISABLED'));
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(0, 2), ['S1 STARTTLS', 'C1 CAPABILITY']);
    assert.equal((up.socket as import('node:tls').TLSSocket).encrypted, true);
    up.socket.destroy();
  });

  test('metrics count connects and auths by result; logs never contain the token or the blob', async () => {
    const { auths, connects, connectDurations } = await h.counts();
    assert.match(auths('success') ?? '', /^\d+$/);
    assert.equal(auths('upstream_rejected'), '2');
    assert.equal(auths('authorization_failed'), '1');
    assert.equal(connects('timeout'), '1');
    assert.match(connectDurations() ?? '', /^\d+$/);
    h.assertLogsClean();
  });
});
