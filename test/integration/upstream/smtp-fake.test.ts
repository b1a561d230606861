import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import {
  classifyAuthReply,
  createSmtpUpstreamConnector,
  saslCapabilities,
} from '../../../src/protocols/smtp/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { FAKE_SMTP_KEYWORDS, startFakeSmtpUpstream } from '../../helpers/fake-smtp-upstream.js';
import { connectorHarness, GOOD, LINE_FAKE_SHAPES, USER } from '../../helpers/fake-upstream-harness.js';

// The fake stands in for Microsoft 365 and Gmail, whose failure shapes no local server produces.

const EHLO = 'proxy.example.net';

describe('SMTP upstream connector against the scripted fake', () => {
  const h = connectorHarness('smtp', createSmtpUpstreamConnector, startFakeSmtpUpstream, {
    ehlo_name: EHLO,
  });
  const { connector, labels, fake, target } = h;

  test('implicit TLS: EHLO keywords as sent, AUTH XOAUTH2 with the initial response byte-exact', async () => {
    const { f, conn } = await h.connected({ mechanisms: ['LOGIN', 'XOAUTH2'] });
    const [first, ...rest] = FAKE_SMTP_KEYWORDS;
    assert.deepEqual(conn.capabilities, [first, 'AUTH LOGIN XOAUTH2', ...rest]);
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [`EHLO ${EHLO}`, `AUTH XOAUTH2 ${xoauth2Blob(USER, GOOD)}`]);
    assert.deepEqual(f.tokens, [GOOD]);
    h.assertHandedOver(conn, up);
    up.socket.destroy();
  });

  test('STARTTLS: EHLO, STARTTLS, EHLO again; only the keywords sent over TLS are kept', async () => {
    const { f, conn } = await h.connected({ tls: 'starttls' });
    assert.ok(conn.capabilities.includes('AUTH LOGIN XOAUTH2 OAUTHBEARER'));
    assert.ok(!conn.capabilities.includes('STARTTLS'), 'the cleartext EHLO reply is discarded');
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(0, 3), [`EHLO ${EHLO}`, 'STARTTLS', `EHLO ${EHLO}`]);
    assert.equal((up.socket as TLSSocket).encrypted, true);
    up.socket.destroy();
  });

  test('bytes pipelined behind STARTTLS 220 are refused (injection), nothing is sent over TLS', async () => {
    const f = await fake({ tls: 'starttls', afterStarttls: '250-AUTH PLAIN\r\n250 injected\r\n' });
    await assert.rejects(connector.connect(target(f), labels), {
      reason: 'protocol_error',
      detail: 'starttls_injection',
    });
    assert.deepEqual(f.received, [`EHLO ${EHLO}`, 'STARTTLS']);
  });

  test('auto picks OAUTHBEARER when it is the only one advertised; its blob names host and port', async () => {
    const { f, conn } = await h.connected({ mechanisms: ['OAUTHBEARER'] });
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(1), [
      `AUTH OAUTHBEARER ${oauthbearerBlob(USER, GOOD, f.host, f.port)}`,
    ]);
    up.socket.destroy();
  });

  test('Microsoft 535 5.7.139 (SMTP AUTH disabled) → protocol_disabled with what to enable', async () => {
    const { conn } = await h.connected({ reject: 'disabled' });
    const err = await h.authError(conn, 'any');
    assert.equal(err.reason, 'protocol_disabled');
    assert.equal(err.detail, 'smtp_auth_disabled');
    assert.match(err.clientText ?? '', /Set-CASMailbox -SmtpClientAuthenticationDisabled \$false/);
    conn.destroy();
  });

  test('Gmail: 334 <base64 JSON> answered with an empty line, then multi-line 535-5.7.8 → upstream_rejected', async () => {
    const { f, conn } = await h.refused({ reject: 'gmail' }, 'stale-token', {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received[2], '', 'XOAUTH2 failure challenge answered with an empty line');
    assert.equal(conn.reusable, true, 'the whole multi-line 535 was read');
    await h.assertRetriedOnSameConnection(f, conn);
  });

  test('454 4.7.0 Too many login attempts → upstream_unavailable (throttled), connection kept', async () => {
    const { conn } = await h.refused({ reject: 'throttle' }, 'any', {
      reason: 'upstream_unavailable',
      detail: 'throttled',
    });
    assert.equal(conn.reusable, true);
    conn.destroy();
  });

  test('421 to AUTH → upstream_unavailable and the connection is closed, not offered for a retry', async () => {
    const { conn } = await h.refused({ reject: 'shutdown' }, 'any', {
      reason: 'upstream_unavailable',
      detail: 'temporary',
    });
    assert.equal(conn.reusable, false);
  });

  h.sharedTests({
    ...LINE_FAKE_SHAPES,
    refuse: { what: 'Microsoft 535 5.7.3', options: { reject: 'microsoft' } },
    unsolicited: { what: '421', bytes: '421 4.4.2 Connection dropped due to inactivity\r\n' },
  });

  test('greetings 554 and multi-line 421 → upstream_unavailable; a non-SMTP greeting → protocol_error', async () => {
    for (const greeting of [
      '554 5.3.2 Service unavailable\r\n',
      '421-4.3.2 busy\r\n421 4.3.2 try later\r\n',
    ]) {
      const f = await fake({ greeting });
      await assert.rejects(connector.connect(target(f), labels), {
        reason: 'upstream_unavailable',
        detail: 'greeting_bye',
      });
    }
    const imap = await fake({ greeting: '* OK IMAP4rev1 ready\r\n' });
    await assert.rejects(connector.connect(target(imap), labels), {
      reason: 'protocol_error',
      detail: 'greeting_invalid',
    });
  });

  test('an upstream without EHLO → protocol_error; HELO is never tried', async () => {
    const f = await fake({ noEhlo: true });
    await assert.rejects(connector.connect(target(f), labels), {
      reason: 'protocol_error',
      detail: 'no_capability',
    });
    assert.deepEqual(f.received, [`EHLO ${EHLO}`]);
  });

  test('a 12 KB token goes through whole on the AUTH line', async () => {
    const big = 'eyJ'.padEnd(12 * 1024, 'x');
    const { f, conn } = await h.connected({ accept: new Set([big]) });
    const up = await conn.authenticate(USER, big);
    assert.deepEqual(f.tokens, [big]);
    assert.ok((f.received[1] ?? '').length > 16_000);
    up.socket.destroy();
  });

  test('bytes upstream sent behind 235 are handed over; the socket carries on raw', async () => {
    const { conn } = await h.connected({ afterAuthOk: '250 2.0.0 early\r\n' });
    const up = await conn.authenticate(USER, GOOD);
    // The fake writes 235 and the extra reply in one write, so they arrive together.
    assert.equal(up.buffered.toString(), '250 2.0.0 early\r\n');
    assert.equal(await h.rawCommand(up, 'NOOP'), '250 2.0.0 OK\r\n');
    up.socket.destroy();
  });

  test('metrics count connects and auths with protocol="smtp"; logs never contain a token or blob', async () => {
    const { auths, connects, connectDurations } = await h.counts();
    assert.equal(auths('upstream_rejected'), '2');
    assert.equal(auths('upstream_rejected', 'oauthbearer'), '1');
    assert.equal(auths('protocol_disabled'), '1');
    assert.equal(auths('upstream_unavailable'), '5');
    assert.equal(auths('timeout'), '1');
    assert.ok(Number(auths('success')) >= 6);
    assert.equal(connects('protocol_error'), '3');
    assert.equal(connects('upstream_unavailable'), '2');
    assert.equal(connects('timeout'), '1');
    assert.equal(connects('aborted'), '1');
    assert.match(connectDurations() ?? '', /^\d+$/);
    h.assertLogsClean();
  });
});

describe('SMTP AUTH replies', () => {
  const reply = (code: number, ...lines: string[]) => ({ code, lines });

  test('each final reply maps to a reason and detail', () => {
    const cases: [ReturnType<typeof reply>, string, string][] = [
      [reply(535, '5.7.8 Authentication failed.'), 'upstream_rejected', 'no'],
      [reply(535, '5.7.139 Authentication unsuccessful'), 'protocol_disabled', 'smtp_auth_disabled'],
      [reply(454, '4.7.0 Temporary authentication failure'), 'upstream_unavailable', 'temporary'],
      [reply(421, '4.7.0 Too many errors, closing'), 'upstream_unavailable', 'throttled'],
      [reply(534, '5.7.9 Application-specific password required.'), 'authorization_failed', 'no'],
      [
        reply(550, '5.7.1 Client does not have permissions to send as this sender'),
        'authorization_failed',
        'no',
      ],
      [reply(530, '5.7.0 Must issue a STARTTLS command first.'), 'protocol_error', 'auth_bad'],
      [reply(538, '5.7.11 Encryption required'), 'protocol_error', 'auth_bad'],
      [reply(504, '5.5.4 Unrecognized authentication type'), 'protocol_error', 'auth_bad'],
      [reply(501, '5.5.2 Syntax error'), 'protocol_error', 'auth_bad'],
    ];
    for (const [r, reason, detail] of cases) {
      const e = classifyAuthReply(r, undefined);
      assert.deepEqual([e.reason, e.detail], [reason, detail], r.lines[0]);
    }
  });

  test('535 after a JSON challenge takes the challenge’s meaning (400: the token is fine, not for this)', () => {
    const e = classifyAuthReply(reply(535, '5.7.8 failed'), {
      reason: 'authorization_failed',
      detail: 'json_400',
    });
    assert.deepEqual([e.reason, e.detail], ['authorization_failed', 'json_400']);
  });

  test('EHLO AUTH keywords in both spellings become AUTH= capabilities', () => {
    assert.deepEqual(saslCapabilities(['PIPELINING', 'AUTH LOGIN xoauth2', 'AUTH=PLAIN OAUTHBEARER']), [
      'AUTH=LOGIN',
      'AUTH=XOAUTH2',
      'AUTH=PLAIN',
      'AUTH=OAUTHBEARER',
    ]);
  });
});
