import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { UpstreamTarget } from '../../../src/core/upstream.js';
import { isProxyError } from '../../../src/errors.js';
import { createLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import {
  classifyAuthReply,
  createSmtpUpstreamConnector,
  saslCapabilities,
} from '../../../src/protocols/smtp/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import {
  FAKE_SMTP_KEYWORDS,
  type FakeSmtpOptions,
  type FakeSmtpUpstream,
  startFakeSmtpUpstream,
} from '../../helpers/fake-smtp-upstream.js';

// The fake stands in for Microsoft 365 and Gmail, whose failure shapes no local server produces.

const USER = 'alice@example.com';
const GOOD = 'good-token';
const EHLO = 'proxy.example.net';

function target(fake: FakeSmtpUpstream, over: Record<string, unknown> = {}): UpstreamTarget {
  return resolveUpstream('smtp', {
    host: fake.host,
    port: fake.port,
    tls: fake.options.tls,
    ca_file: fake.caFile,
    ehlo_name: EHLO,
    connect_timeout_seconds: 5,
    auth_timeout_seconds: 5,
    ...over,
  });
}

describe('SMTP upstream connector against the scripted fake', () => {
  const fakes: FakeSmtpUpstream[] = [];
  let logText = '';
  const logStream = new PassThrough();
  logStream.on('data', (d: Buffer) => {
    logText += d.toString();
  });
  const metrics = createMetrics({ defaults: false });
  const connector = createSmtpUpstreamConnector({
    metrics,
    log: createLogger({ level: 'trace', destination: logStream }),
  });
  const labels = { provider: 'fake' };

  async function fake(o: Partial<FakeSmtpOptions> = {}): Promise<FakeSmtpUpstream> {
    const f = await startFakeSmtpUpstream({ accept: new Set([GOOD]), ...o });
    fakes.push(f);
    return f;
  }
  after(async () => {
    await Promise.all(fakes.map((f) => f.close()));
  });

  test('implicit TLS: EHLO keywords as sent, AUTH XOAUTH2 with the initial response byte-exact', async () => {
    const f = await fake({ mechanisms: ['LOGIN', 'XOAUTH2'] });
    const conn = await connector.connect(target(f), labels);
    const [first, ...rest] = FAKE_SMTP_KEYWORDS;
    assert.deepEqual(conn.capabilities, [first, 'AUTH LOGIN XOAUTH2', ...rest]);
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received, [`EHLO ${EHLO}`, `AUTH XOAUTH2 ${xoauth2Blob(USER, GOOD)}`]);
    assert.deepEqual(f.tokens, [GOOD]);
    assert.deepEqual(up.capabilities, conn.capabilities);
    assert.equal(up.buffered.length, 0);
    assert.equal(up.socket.isPaused(), true);
    assert.equal(up.socket.listenerCount('data'), 0);
    assert.equal(conn.reusable, false);
    up.socket.destroy();
  });

  test('STARTTLS: EHLO, STARTTLS, EHLO again; only the keywords sent over TLS are kept', async () => {
    const f = await fake({ tls: 'starttls' });
    const conn = await connector.connect(target(f), labels);
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
    const f = await fake({ mechanisms: ['OAUTHBEARER'] });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.received.slice(1), [
      `AUTH OAUTHBEARER ${oauthbearerBlob(USER, GOOD, f.host, f.port)}`,
    ]);
    up.socket.destroy();
  });

  test('Microsoft 535 5.7.3 → upstream_rejected; the same connection takes one more AUTH', async () => {
    const f = await fake({ reject: 'microsoft' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'stale-token'), {
      reason: 'upstream_rejected',
      detail: 'no',
    });
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    assert.deepEqual(f.tokens, ['stale-token', GOOD]);
    assert.equal(f.connections, 1);
    up.socket.destroy();
  });

  test('Microsoft 535 5.7.139 (SMTP AUTH disabled) → protocol_disabled with what to enable', async () => {
    const f = await fake({ reject: 'disabled' });
    const conn = await connector.connect(target(f), labels);
    const err = await conn.authenticate(USER, 'any').then(
      () => assert.fail('must not succeed'),
      (e: unknown) => e,
    );
    assert.ok(isProxyError(err));
    assert.equal(err.reason, 'protocol_disabled');
    assert.equal(err.detail, 'smtp_auth_disabled');
    assert.match(err.clientText ?? '', /Set-CASMailbox -SmtpClientAuthenticationDisabled \$false/);
    conn.destroy();
  });

  test('Gmail: 334 <base64 JSON> answered with an empty line, then multi-line 535-5.7.8 → upstream_rejected', async () => {
    const f = await fake({ reject: 'gmail' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'stale-token'), {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received[2], '', 'XOAUTH2 failure challenge answered with an empty line');
    assert.equal(conn.reusable, true, 'the whole multi-line 535 was read');
    const up = await conn.authenticate(USER, GOOD);
    assert.equal(f.connections, 1);
    up.socket.destroy();
  });

  test('OAUTHBEARER failure challenge is answered with AQ== (a single 0x01)', async () => {
    const f = await fake({ reject: 'gmail', mechanisms: ['OAUTHBEARER'] });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'bad'), {
      reason: 'upstream_rejected',
      detail: 'json_invalid_token',
    });
    assert.equal(f.received[2], 'AQ==');
    conn.destroy();
  });

  test('454 4.7.0 Too many login attempts → upstream_unavailable (throttled), connection kept', async () => {
    const f = await fake({ reject: 'throttle' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), {
      reason: 'upstream_unavailable',
      detail: 'throttled',
    });
    assert.equal(conn.reusable, true);
    conn.destroy();
  });

  test('421 to AUTH → upstream_unavailable and the connection is closed, not offered for a retry', async () => {
    const f = await fake({ reject: 'shutdown' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), {
      reason: 'upstream_unavailable',
      detail: 'temporary',
    });
    assert.equal(conn.reusable, false);
  });

  test('upstream closes mid-AUTH → upstream_unavailable, not reusable', async () => {
    const f = await fake({ reject: 'close' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'upstream_unavailable' });
    assert.equal(conn.reusable, false);
    await assert.rejects(conn.authenticate(USER, GOOD), {
      reason: 'upstream_unavailable',
      detail: 'not_reusable',
    });
  });

  test('a frozen upstream: AUTH times out within auth_timeout_seconds', async () => {
    const f = await fake({ reject: 'hang' });
    const conn = await connector.connect(target(f, { auth_timeout_seconds: 0.3 }), labels);
    const t0 = Date.now();
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'timeout', detail: 'response_timeout' });
    assert.ok(Date.now() - t0 < 2000);
    assert.equal(conn.reusable, false);
  });

  test('a server that never greets: connect times out within connect_timeout_seconds', async () => {
    const f = await fake({ greeting: 'never' });
    const t0 = Date.now();
    await assert.rejects(connector.connect(target(f, { connect_timeout_seconds: 0.3 }), labels), {
      reason: 'timeout',
    });
    assert.ok(Date.now() - t0 < 2000);
  });

  test('an abort while connecting destroys the socket and is counted as aborted', async () => {
    const f = await fake({ greeting: 'never' });
    const ac = new AbortController();
    const p = connector.connect(target(f), labels, ac.signal);
    await until(() => f.connections === 1, 5000, 'the dial to arrive');
    ac.abort();
    await assert.rejects(withDeadline(p, 2000, 'the aborted connect'), {
      reason: 'timeout',
      detail: 'aborted',
    });
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
    const f = await fake({ accept: new Set([big]) });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, big);
    assert.deepEqual(f.tokens, [big]);
    assert.ok((f.received[1] ?? '').length > 16_000);
    up.socket.destroy();
  });

  test('bytes upstream sent behind 235 are handed over; the socket carries on raw', async () => {
    const f = await fake({ afterAuthOk: '250 2.0.0 early\r\n' });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, GOOD);
    // The fake writes 235 and the extra reply in one write, so they arrive together.
    assert.equal(up.buffered.toString(), '250 2.0.0 early\r\n');
    up.socket.write('NOOP\r\n');
    up.socket.resume();
    const reply = await withDeadline(
      new Promise<string>((r) => up.socket.once('data', (d: Buffer) => r(d.toString()))),
      5000,
      'the NOOP reply',
    );
    assert.equal(reply, '250 2.0.0 OK\r\n');
    up.socket.destroy();
  });

  test('an unsolicited 421 on an idle connection makes it unusable', async () => {
    const f = await fake();
    const conn = await connector.connect(target(f), labels);
    assert.equal(conn.reusable, true);
    f.sendAll('421 4.4.2 Connection dropped due to inactivity\r\n');
    await until(() => !conn.reusable, 5000, 'the 421 to arrive');
    await assert.rejects(conn.authenticate(USER, GOOD), { detail: 'not_reusable' });
    conn.destroy();
  });

  test('metrics count connects and auths with protocol="smtp"; logs never contain a token or blob', async () => {
    const text = await metrics.registry.metrics();
    const auths = (result: string, mech = 'xoauth2') =>
      new RegExp(
        `imap_proxy_upstream_auths_total\\{protocol="smtp",provider="fake",mechanism="${mech}",result="${result}"\\} (\\d+)`,
      ).exec(text)?.[1];
    assert.equal(auths('upstream_rejected'), '2');
    assert.equal(auths('upstream_rejected', 'oauthbearer'), '1');
    assert.equal(auths('protocol_disabled'), '1');
    assert.equal(auths('upstream_unavailable'), '5');
    assert.equal(auths('timeout'), '1');
    assert.ok(Number(auths('success')) >= 6);
    const connects = (result: string) =>
      new RegExp(
        `imap_proxy_upstream_connects_total\\{protocol="smtp",provider="fake",result="${result}"\\} (\\d+)`,
      ).exec(text)?.[1];
    assert.equal(connects('protocol_error'), '3');
    assert.equal(connects('upstream_unavailable'), '2');
    assert.equal(connects('timeout'), '1');
    assert.equal(connects('aborted'), '1');
    assert.match(
      text,
      /imap_proxy_upstream_connect_duration_seconds_count\{protocol="smtp",provider="fake"\} \d+/,
    );
    assert.ok(logText.includes('upstream auth failed'), 'logs were captured');
    for (const secret of [GOOD, 'stale-token', xoauth2Blob(USER, GOOD)])
      assert.ok(!logText.includes(secret), secret);
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
