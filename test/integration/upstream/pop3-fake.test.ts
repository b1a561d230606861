import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { Pop3ResponseReader } from '../../../src/protocols/pop3/response-reader.js';
import {
  classifyAuthErr,
  createPop3UpstreamConnector,
  saslCapabilities,
} from '../../../src/protocols/pop3/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { FAKE_POP3_CAPA, startFakePop3Upstream } from '../../helpers/fake-pop3-upstream.js';
import { connectorHarness, GOOD, LINE_FAKE_SHAPES, USER } from '../../helpers/fake-upstream-harness.js';

// The fake stands in for Microsoft 365 and Gmail, whose failure shapes no local server produces.

describe('POP3 upstream connector against the scripted fake', () => {
  const h = connectorHarness('pop3', createPop3UpstreamConnector, startFakePop3Upstream);
  const { connector, labels, fake, target } = h;

  test('implicit TLS: CAPA lines as sent; a short AUTH XOAUTH2 line carries its initial response', async () => {
    const { f, conn } = await h.connected();
    assert.deepEqual(conn.capabilities, [...FAKE_POP3_CAPA, 'SASL PLAIN XOAUTH2']);
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    const line = `AUTH XOAUTH2 ${xoauth2Blob(USER, GOOD)}`;
    assert.ok(line.length + 2 <= 255);
    assert.deepEqual(f.received, ['CAPA', line]);
    assert.deepEqual(f.tokens, [GOOD]);
    h.assertHandedOver(conn, up);
    up.socket.destroy();
  });

  test('an AUTH line over 255 octets: `AUTH XOAUTH2`, the `+ ` prompt, then the blob (Microsoft’s form)', async () => {
    const token = 'eyJ'.padEnd(160, 'x');
    const { f, conn } = await h.connected({ accept: new Set([token]) });
    const up = await conn.authenticate(USER, token);
    assert.deepEqual(f.received.slice(1), ['AUTH XOAUTH2', xoauth2Blob(USER, token)]);
    up.socket.destroy();
  });

  test('a 12 KB token goes through whole after the continuation', async () => {
    const big = 'eyJ'.padEnd(12 * 1024, 'x');
    const { f, conn } = await h.connected({ accept: new Set([big]) });
    const up = await conn.authenticate(USER, big);
    assert.deepEqual(f.tokens, [big]);
    assert.equal(f.received[1], 'AUTH XOAUTH2');
    assert.ok((f.received[2] ?? '').length > 16_000);
    up.socket.destroy();
  });

  test('STLS: CAPA, STLS, CAPA again; only the lines sent over TLS are kept', async () => {
    const { f, conn } = await h.connected({ tls: 'starttls' });
    assert.ok(conn.capabilities.includes('SASL PLAIN XOAUTH2'));
    assert.ok(!conn.capabilities.includes('STLS'), 'the cleartext CAPA answer is forgotten');
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(0, 3), ['CAPA', 'STLS', 'CAPA']);
    assert.equal((up.socket as TLSSocket).encrypted, true);
    up.socket.destroy();
  });

  test('bytes pipelined behind STLS +OK are refused (injection), nothing is sent over TLS', async () => {
    const f = await fake({ tls: 'starttls', afterStls: '+OK\r\nSASL PLAIN\r\n.\r\n' });
    await assert.rejects(connector.connect(target(f), labels), {
      reason: 'protocol_error',
      detail: 'starttls_injection',
    });
    assert.deepEqual(f.received, ['CAPA', 'STLS']);
  });

  test('a server without CAPA: capabilities [] and AUTH is still tried (XOAUTH2 by default)', async () => {
    const { f, conn } = await h.connected({ noCapa: true });
    assert.deepEqual(conn.capabilities, []);
    const up = await conn.authenticate(USER, GOOD);
    assert.match(f.received[1] ?? '', /^AUTH XOAUTH2 /);
    up.socket.destroy();
  });

  test('auto picks OAUTHBEARER when it is the only one advertised; its blob names host and port', async () => {
    const { f, conn } = await h.connected({ mechanisms: ['OAUTHBEARER'] });
    const up = await conn.authenticate(USER, GOOD);
    const blob = oauthbearerBlob(USER, GOOD, f.host, f.port);
    const ir = `AUTH OAUTHBEARER ${blob}`;
    assert.deepEqual(f.received.slice(1), ir.length + 2 <= 255 ? [ir] : ['AUTH OAUTHBEARER', blob]);
    up.socket.destroy();
  });

  test('Gmail: + <base64 JSON> answered with an empty line, then -ERR [AUTH] → upstream_rejected, reusable', async () => {
    const { f, conn } = await h.refused({ reject: 'gmail' }, 'stale-token', {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received.at(-1), '', 'XOAUTH2 failure challenge answered with an empty line');
    await h.assertRetriedOnSameConnection(f, conn);
  });

  test('a JSON challenge with status 400 → authorization_failed (a fresh token will not help)', async () => {
    const { conn } = await h.refused({ reject: 'forbidden' }, 'any', {
      reason: 'authorization_failed',
      detail: 'json_400',
    });
    conn.destroy();
  });

  test('-ERR [IN-USE] → mailbox_in_use (in_use) and the connection is closed', async () => {
    const { conn } = await h.refused({ reject: 'in_use' }, 'any', {
      reason: 'mailbox_in_use',
      detail: 'in_use',
    });
    assert.equal(conn.reusable, false);
    await assert.rejects(conn.authenticate(USER, GOOD), { detail: 'not_reusable' });
  });

  test('-ERR [SYS/TEMP] → upstream_unavailable: temporary, or throttled when it says so', async () => {
    for (const [reject, detail] of [
      ['temp', 'temporary'],
      ['throttle', 'throttled'],
    ] as const) {
      const { conn } = await h.refused({ reject }, 'any', { reason: 'upstream_unavailable', detail });
      conn.destroy();
    }
  });

  test('-ERR [SYS/PERM]: POP not enabled → protocol_disabled with what to enable; otherwise authorization_failed', async () => {
    const { conn } = await h.connected({ reject: 'disabled' });
    const err = await h.authError(conn, 'any');
    assert.equal(err.reason, 'protocol_disabled');
    assert.equal(err.detail, 'pop_disabled');
    assert.match(err.clientText ?? '', /Set-CASMailbox -PopEnabled \$true/);
    conn.destroy();
    const g = await fake({ reject: 'perm' });
    const c2 = await connector.connect(target(g), labels);
    await assert.rejects(c2.authenticate(USER, 'any'), { reason: 'authorization_failed' });
    c2.destroy();
  });

  h.sharedTests({
    ...LINE_FAKE_SHAPES,
    refuse: { what: 'Microsoft’s immediate -ERR', options: { reject: 'microsoft' } },
    unsolicited: { what: '-ERR', bytes: '-ERR [SYS/TEMP] Connection timed out\r\n' },
  });

  test('greeting -ERR → upstream_unavailable (greeting_bye); a non-POP3 greeting → protocol_error', async () => {
    const bye = await fake({ greeting: '-ERR [SYS/TEMP] server busy\r\n' });
    await assert.rejects(connector.connect(target(bye), labels), {
      reason: 'upstream_unavailable',
      detail: 'greeting_bye',
    });
    for (const greeting of ['* OK IMAP4rev1 ready\r\n', '+ go ahead\r\n']) {
      const f = await fake({ greeting });
      await assert.rejects(connector.connect(target(f), labels), {
        reason: 'protocol_error',
        detail: 'greeting_invalid',
      });
    }
  });

  test('bytes behind AUTH +OK are handed over; RETR on the raw socket returns the message', async () => {
    const { f, conn } = await h.connected({ afterAuthOk: '+OK 1 42\r\n' });
    const up = await conn.authenticate(USER, GOOD);
    // The fake writes +OK and the extra line in one write, so they arrive together.
    assert.equal(up.buffered.toString(), '+OK 1 42\r\n');
    const reader = new Pop3ResponseReader(up.socket);
    up.socket.write('RETR 1\r\n');
    const r = await reader.multiline(5000);
    assert.equal(r.status, 'ok');
    const body = r.lines.map((l) => `${l.toString()}\r\n`).join('');
    assert.equal(body, f.options.message);
    up.socket.destroy();
  });

  test('metrics count connects and auths with protocol="pop3"; logs never contain a token or blob', async () => {
    const { auths, connects, connectDurations } = await h.counts();
    assert.equal(auths('upstream_rejected'), '2');
    assert.equal(auths('upstream_rejected', 'oauthbearer'), '1');
    assert.equal(auths('mailbox_in_use'), '1');
    assert.equal(auths('protocol_disabled'), '1');
    assert.equal(auths('authorization_failed'), '2');
    assert.equal(auths('upstream_unavailable'), '6');
    assert.equal(auths('timeout'), '1');
    assert.equal(auths('success'), '8');
    assert.equal(auths('success', 'oauthbearer'), '1');
    assert.equal(connects('protocol_error'), '3');
    assert.equal(connects('upstream_unavailable'), '1');
    assert.equal(connects('timeout'), '1');
    assert.equal(connects('aborted'), '1');
    assert.match(connectDurations() ?? '', /^\d+$/);
    h.assertLogsClean();
  });
});

describe('POP3 AUTH failures', () => {
  const err = (text: string, code?: string) => ({ status: 'err' as const, text, code });

  test('each final -ERR maps to a reason and detail', () => {
    const cases: [ReturnType<typeof err>, string, string][] = [
      [err('[AUTH] Authentication failed.', 'AUTH'), 'upstream_rejected', 'no'],
      [err('Authentication failure: unknown user name or bad password.'), 'upstream_rejected', 'no'],
      [err('[IN-USE] Mailbox locked', 'IN-USE'), 'mailbox_in_use', 'in_use'],
      [err('[SYS/TEMP] Temporary authentication failure.', 'SYS/TEMP'), 'upstream_unavailable', 'temporary'],
      [err('[SYS/TEMP] Too many connections', 'SYS/TEMP'), 'upstream_unavailable', 'throttled'],
      [err('[LOGIN-DELAY] wait 5 minutes', 'LOGIN-DELAY'), 'upstream_unavailable', 'throttled'],
      [err('Temporary failure, try again later'), 'upstream_unavailable', 'temporary'],
      [err('[SYS/PERM] Account suspended.', 'SYS/PERM'), 'authorization_failed', 'no'],
      [err('[SYS/PERM] POP3 is disabled for this mailbox', 'SYS/PERM'), 'protocol_disabled', 'pop_disabled'],
    ];
    for (const [r, reason, detail] of cases) {
      const e = classifyAuthErr(r, undefined);
      assert.deepEqual([e.reason, e.detail], [reason, detail], r.text);
    }
  });

  test('-ERR [AUTH] after a JSON challenge takes the challenge’s meaning', () => {
    const e = classifyAuthErr(err('[AUTH] Invalid credentials', 'AUTH'), {
      reason: 'authorization_failed',
      detail: 'json_403',
    });
    assert.deepEqual([e.reason, e.detail], ['authorization_failed', 'json_403']);
  });

  test('the CAPA SASL line becomes AUTH= capabilities; other lines and a bare SASL give none', () => {
    assert.deepEqual(saslCapabilities(['TOP', 'SASL PLAIN xoauth2 OAUTHBEARER', 'USER', 'SASL']), [
      'AUTH=PLAIN',
      'AUTH=XOAUTH2',
      'AUTH=OAUTHBEARER',
    ]);
  });
});
