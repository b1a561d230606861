import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { AuthenticatedUpstream, UpstreamTarget } from '../../../src/core/upstream.js';
import { createSmtpUpstreamConnector } from '../../../src/protocols/smtp/upstream.js';
import { until } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot, withDovecotLog } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';
import { type SmtpSink, startSmtpSink } from '../../helpers/smtp-sink.js';

// Real components: Dovecot 2.3 submission validates each token by introspection at a real
// oidc-provider and relays to a recording SMTP sink.

const USER = 'alice@example.com';
const connector = createSmtpUpstreamConnector();
const labels = { provider: 'dovecot' };

function withCredentials(url: string, id: string, secret: string): string {
  const u = new URL(url);
  u.username = id;
  u.password = secret;
  return u.toString();
}

/** Talks SMTP on the handed-over socket: `say(line)` resolves with the whole reply to it. */
function talk(up: AuthenticatedUpstream): (line: string) => Promise<string> {
  let text = up.buffered.toString();
  up.socket.on('data', (d: Buffer) => {
    text += d.toString();
  });
  up.socket.resume();
  const last = () => /^\d{3} [^\n]*\n/m.exec(text);
  return async (line) => {
    up.socket.write(`${line}\r\n`);
    await until(() => last() !== null, 10_000, `the reply to ${line.split(' ')[0]}`);
    const m = last();
    const reply = text.slice(0, (m?.index ?? 0) + (m?.[0].length ?? 0));
    text = text.slice(reply.length);
    return reply;
  };
}

describe('SMTP upstream connector against real Dovecot submission + oidc-provider', () => {
  let op: TestOP;
  let sink: SmtpSink;
  let dv: Dovecot;
  let dvDown: Dovecot;
  let token: string;

  before(async () => {
    op = await startOP();
    sink = await startSmtpSink();
    const url = withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret);
    [dv, dvDown] = await Promise.all([
      startDovecot({ introspectionUrl: url, relayPort: sink.port, authDebug: true }),
      startDovecot({
        introspectionUrl: `http://dovecot:x@127.0.0.1:${await freePort()}/token/introspection`,
      }),
    ]);
    token = (await op.mintGrant(USER)).access_token;
  });
  after(async () => {
    await Promise.all([dv?.stop(), dvDown?.stop(), sink?.stop(), op?.close()]);
  });

  const logged = (fn: () => Promise<void>) => withDovecotLog(() => dv, fn);

  const target = (d: Dovecot, over: Record<string, unknown> = {}): UpstreamTarget =>
    resolveUpstream('smtp', {
      host: d.host,
      port: d.submissionsPort,
      tls: 'implicit',
      ca_file: d.caFile,
      servername: 'localhost',
      ehlo_name: 'proxy.example.net',
      ...over,
    });

  const matrix = [
    { tls: 'implicit', mechanism: 'xoauth2' },
    { tls: 'implicit', mechanism: 'oauthbearer' },
    { tls: 'starttls', mechanism: 'xoauth2' },
    { tls: 'starttls', mechanism: 'oauthbearer' },
  ] as const;
  let sent = 0;
  for (const m of matrix) {
    test(
      `${m.mechanism.toUpperCase()} over ${m.tls} TLS with a real OP token → authenticated, a message relays`,
      logged(async () => {
        const port = m.tls === 'implicit' ? dv.submissionsPort : dv.submissionPort;
        const conn = await connector.connect(
          target(dv, { port, tls: m.tls, mechanism: m.mechanism }),
          labels,
        );
        const auth = conn.capabilities.find((c) => c.startsWith('AUTH '));
        assert.match(auth ?? '(no AUTH keyword)', /\bXOAUTH2\b.*\bOAUTHBEARER\b/);
        assert.ok(!conn.capabilities.includes('STARTTLS'), 'keywords are the ones sent over TLS');
        const up = await conn.authenticate(USER, token);
        assert.equal((up.socket as TLSSocket).encrypted, true);
        const say = talk(up);
        assert.match(await say(`MAIL FROM:<${USER}>`), /^250 /);
        assert.match(await say('RCPT TO:<bob@example.org>'), /^250 /);
        assert.match(await say('DATA'), /^354 /);
        const body = `Subject: ${m.tls} ${m.mechanism}\r\n\r\nhello\r\n`;
        assert.match(await say(`${body}.`), /^250 /);
        sent++;
        const got = await sink.waitFor(sent, 10_000);
        assert.ok(got[sent - 1]?.data.toString().endsWith(body), 'the sink got the message');
        up.socket.destroy();
      }),
    );
  }

  test(
    'bad token → 334 JSON, empty line, 535 → upstream_rejected; the same connection then authenticates',
    logged(async () => {
      const conn = await connector.connect(target(dv, { mechanism: 'xoauth2' }), labels);
      await assert.rejects(conn.authenticate(USER, 'not-a-valid-token'), {
        reason: 'upstream_rejected',
        detail: 'json_401',
      });
      assert.equal(conn.reusable, true);
      const up = await conn.authenticate(USER, token);
      assert.match(await talk(up)('NOOP'), /^250 /);
      up.socket.destroy();
    }),
  );

  test(
    'OAUTHBEARER bad token over STARTTLS → upstream_rejected (invalid_token), still reusable',
    logged(async () => {
      const conn = await connector.connect(
        target(dv, { port: dv.submissionPort, tls: 'starttls', mechanism: 'oauthbearer' }),
        labels,
      );
      await assert.rejects(conn.authenticate(USER, 'not-a-valid-token'), {
        reason: 'upstream_rejected',
        detail: 'json_invalid_token',
      });
      assert.equal(conn.reusable, true);
      const up = await conn.authenticate(USER, token);
      up.socket.destroy();
    }),
  );

  test('introspection endpoint down → upstream_unavailable (temporary)', async () => {
    const conn = await connector.connect(target(dvDown), labels);
    await assert.rejects(conn.authenticate(USER, token), {
      reason: 'upstream_unavailable',
      detail: 'temporary',
    });
    conn.destroy();
  });

  test('Dovecot’s certificate without its CA → tls_verify on implicit TLS and on STARTTLS', async () => {
    await assert.rejects(connector.connect(target(dv, { ca_file: undefined }), labels), {
      reason: 'upstream_unavailable',
      detail: 'tls_verify',
    });
    await assert.rejects(
      connector.connect(target(dv, { ca_file: undefined, port: dv.submissionPort, tls: 'starttls' }), labels),
      { reason: 'upstream_unavailable', detail: 'tls_verify' },
    );
  });
});
