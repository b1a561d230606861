import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { UpstreamTarget } from '../../../src/core/upstream.js';
import { isProxyError } from '../../../src/errors.js';
import { createLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import { Pop3ResponseReader } from '../../../src/protocols/pop3/response-reader.js';
import {
  classifyAuthErr,
  createPop3UpstreamConnector,
  saslCapabilities,
} from '../../../src/protocols/pop3/upstream.js';
import { oauthbearerBlob, xoauth2Blob } from '../../../src/sasl/client.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import {
  FAKE_POP3_CAPA,
  type FakePop3Options,
  type FakePop3Upstream,
  startFakePop3Upstream,
} from '../../helpers/fake-pop3-upstream.js';

// The fake stands in for Microsoft 365 and Gmail, whose failure shapes no local server produces.

const USER = 'alice@example.com';
const GOOD = 'good-token';

function target(fake: FakePop3Upstream, over: Record<string, unknown> = {}): UpstreamTarget {
  return resolveUpstream('pop3', {
    host: fake.host,
    port: fake.port,
    tls: fake.options.tls,
    ca_file: fake.caFile,
    connect_timeout_seconds: 5,
    auth_timeout_seconds: 5,
    ...over,
  });
}

describe('POP3 upstream connector against the scripted fake', () => {
  const fakes: FakePop3Upstream[] = [];
  let logText = '';
  const logStream = new PassThrough();
  logStream.on('data', (d: Buffer) => {
    logText += d.toString();
  });
  const metrics = createMetrics({ defaults: false });
  const connector = createPop3UpstreamConnector({
    metrics,
    log: createLogger({ level: 'trace', destination: logStream }),
  });
  const labels = { provider: 'fake' };

  async function fake(o: Partial<FakePop3Options> = {}): Promise<FakePop3Upstream> {
    const f = await startFakePop3Upstream({ accept: new Set([GOOD]), ...o });
    fakes.push(f);
    return f;
  }
  after(async () => {
    await Promise.all(fakes.map((f) => f.close()));
  });

  test('implicit TLS: CAPA lines as sent; a short AUTH XOAUTH2 line carries its initial response', async () => {
    const f = await fake();
    const conn = await connector.connect(target(f), labels);
    assert.deepEqual(conn.capabilities, [...FAKE_POP3_CAPA, 'SASL PLAIN XOAUTH2']);
    assert.equal(conn.reusable, true);
    const up = await conn.authenticate(USER, GOOD);
    const line = `AUTH XOAUTH2 ${xoauth2Blob(USER, GOOD)}`;
    assert.ok(line.length + 2 <= 255);
    assert.deepEqual(f.received, ['CAPA', line]);
    assert.deepEqual(f.tokens, [GOOD]);
    assert.deepEqual(up.capabilities, conn.capabilities);
    assert.equal(up.buffered.length, 0);
    assert.equal(up.socket.isPaused(), true);
    assert.equal(up.socket.listenerCount('data'), 0);
    assert.equal(conn.reusable, false);
    up.socket.destroy();
  });

  test('an AUTH line over 255 octets: `AUTH XOAUTH2`, the `+ ` prompt, then the blob (Microsoft’s form)', async () => {
    const token = 'eyJ'.padEnd(160, 'x');
    const f = await fake({ accept: new Set([token]) });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, token);
    assert.deepEqual(f.received.slice(1), ['AUTH XOAUTH2', xoauth2Blob(USER, token)]);
    up.socket.destroy();
  });

  test('a 12 KB token goes through whole after the continuation', async () => {
    const big = 'eyJ'.padEnd(12 * 1024, 'x');
    const f = await fake({ accept: new Set([big]) });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, big);
    assert.deepEqual(f.tokens, [big]);
    assert.equal(f.received[1], 'AUTH XOAUTH2');
    assert.ok((f.received[2] ?? '').length > 16_000);
    up.socket.destroy();
  });

  test('STLS: CAPA, STLS, CAPA again; only the lines sent over TLS are kept', async () => {
    const f = await fake({ tls: 'starttls' });
    const conn = await connector.connect(target(f), labels);
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
    const f = await fake({ noCapa: true });
    const conn = await connector.connect(target(f), labels);
    assert.deepEqual(conn.capabilities, []);
    const up = await conn.authenticate(USER, GOOD);
    assert.match(f.received[1] ?? '', /^AUTH XOAUTH2 /);
    up.socket.destroy();
  });

  test('auto picks OAUTHBEARER when it is the only one advertised; its blob names host and port', async () => {
    const f = await fake({ mechanisms: ['OAUTHBEARER'] });
    const conn = await connector.connect(target(f), labels);
    const up = await conn.authenticate(USER, GOOD);
    const blob = oauthbearerBlob(USER, GOOD, f.host, f.port);
    const ir = `AUTH OAUTHBEARER ${blob}`;
    assert.deepEqual(f.received.slice(1), ir.length + 2 <= 255 ? [ir] : ['AUTH OAUTHBEARER', blob]);
    up.socket.destroy();
  });

  test('Microsoft’s immediate -ERR → upstream_rejected; the same connection takes one more AUTH', async () => {
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

  test('Gmail: + <base64 JSON> answered with an empty line, then -ERR [AUTH] → upstream_rejected, reusable', async () => {
    const f = await fake({ reject: 'gmail' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'stale-token'), {
      reason: 'upstream_rejected',
      detail: 'json_401',
    });
    assert.equal(f.received.at(-1), '', 'XOAUTH2 failure challenge answered with an empty line');
    assert.equal(conn.reusable, true);
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
    assert.equal(f.received.at(-1), 'AQ==');
    conn.destroy();
  });

  test('a JSON challenge with status 400 → authorization_failed (a fresh token will not help)', async () => {
    const f = await fake({ reject: 'forbidden' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), {
      reason: 'authorization_failed',
      detail: 'json_400',
    });
    conn.destroy();
  });

  test('-ERR [IN-USE] → mailbox_in_use (in_use) and the connection is closed', async () => {
    const f = await fake({ reject: 'in_use' });
    const conn = await connector.connect(target(f), labels);
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'mailbox_in_use', detail: 'in_use' });
    assert.equal(conn.reusable, false);
    await assert.rejects(conn.authenticate(USER, GOOD), { detail: 'not_reusable' });
  });

  test('-ERR [SYS/TEMP] → upstream_unavailable: temporary, or throttled when it says so', async () => {
    for (const [reject, detail] of [
      ['temp', 'temporary'],
      ['throttle', 'throttled'],
    ] as const) {
      const f = await fake({ reject });
      const conn = await connector.connect(target(f), labels);
      await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'upstream_unavailable', detail });
      conn.destroy();
    }
  });

  test('-ERR [SYS/PERM]: POP not enabled → protocol_disabled with what to enable; otherwise authorization_failed', async () => {
    const f = await fake({ reject: 'disabled' });
    const conn = await connector.connect(target(f), labels);
    const err = await conn.authenticate(USER, 'any').then(
      () => assert.fail('must not succeed'),
      (e: unknown) => e,
    );
    assert.ok(isProxyError(err));
    assert.equal(err.reason, 'protocol_disabled');
    assert.equal(err.detail, 'pop_disabled');
    assert.match(err.clientText ?? '', /Set-CASMailbox -PopEnabled \$true/);
    conn.destroy();
    const g = await fake({ reject: 'perm' });
    const c2 = await connector.connect(target(g), labels);
    await assert.rejects(c2.authenticate(USER, 'any'), { reason: 'authorization_failed' });
    c2.destroy();
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
    const f = await fake({ afterAuthOk: '+OK 1 42\r\n' });
    const conn = await connector.connect(target(f), labels);
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

  test('an unsolicited -ERR on an idle connection makes it unusable', async () => {
    const f = await fake();
    const conn = await connector.connect(target(f), labels);
    assert.equal(conn.reusable, true);
    f.sendAll('-ERR [SYS/TEMP] Connection timed out\r\n');
    await until(() => !conn.reusable, 5000, 'the -ERR to arrive');
    await assert.rejects(conn.authenticate(USER, GOOD), { detail: 'not_reusable' });
    conn.destroy();
  });

  test('metrics count connects and auths with protocol="pop3"; logs never contain a token or blob', async () => {
    const text = await metrics.registry.metrics();
    const auths = (result: string, mech = 'xoauth2') =>
      new RegExp(
        `imap_proxy_upstream_auths_total\\{protocol="pop3",provider="fake",mechanism="${mech}",result="${result}"\\} (\\d+)`,
      ).exec(text)?.[1];
    assert.equal(auths('upstream_rejected'), '2');
    assert.equal(auths('upstream_rejected', 'oauthbearer'), '1');
    assert.equal(auths('mailbox_in_use'), '1');
    assert.equal(auths('protocol_disabled'), '1');
    assert.equal(auths('authorization_failed'), '2');
    assert.equal(auths('upstream_unavailable'), '6');
    assert.equal(auths('timeout'), '1');
    assert.equal(auths('success'), '8');
    assert.equal(auths('success', 'oauthbearer'), '1');
    const connects = (result: string) =>
      new RegExp(
        `imap_proxy_upstream_connects_total\\{protocol="pop3",provider="fake",result="${result}"\\} (\\d+)`,
      ).exec(text)?.[1];
    assert.equal(connects('protocol_error'), '3');
    assert.equal(connects('upstream_unavailable'), '1');
    assert.equal(connects('timeout'), '1');
    assert.equal(connects('aborted'), '1');
    assert.match(
      text,
      /imap_proxy_upstream_connect_duration_seconds_count\{protocol="pop3",provider="fake"\} \d+/,
    );
    assert.ok(logText.includes('upstream auth failed'), 'logs were captured');
    for (const secret of [GOOD, 'stale-token', xoauth2Blob(USER, GOOD)])
      assert.ok(!logText.includes(secret), secret);
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
