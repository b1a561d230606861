import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { AuthenticatedUpstream, UpstreamTarget } from '../../../src/core/upstream.js';
import { Pop3ResponseReader } from '../../../src/protocols/pop3/response-reader.js';
import { createPop3UpstreamConnector } from '../../../src/protocols/pop3/upstream.js';
import { type Dovecot, startDovecot, withDovecotLog } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';

// Real components: Dovecot 2.3 POP3 validates each token by introspection at a real oidc-provider.

const USER = 'alice@example.com';
const connector = createPop3UpstreamConnector();
const labels = { provider: 'dovecot' };
/** Lines starting with "." travel dot-stuffed; RETR must give them back as seeded. */
const SEED =
  'From: bob@example.org\r\nTo: alice@example.com\r\nSubject: pop3 seed\r\n\r\n' +
  'first line\r\n.a line with a leading dot\r\n..two dots\r\n.\r\nlast line\r\n';

function withCredentials(url: string, id: string, secret: string): string {
  const u = new URL(url);
  u.username = id;
  u.password = secret;
  return u.toString();
}

/** RETR 1 on the handed-over socket: the message as the client would store it. */
async function retr(up: AuthenticatedUpstream): Promise<string> {
  assert.equal(up.buffered.length, 0, 'nothing arrived behind +OK');
  const reader = new Pop3ResponseReader(up.socket);
  up.socket.write('RETR 1\r\n');
  const r = await reader.multiline(10_000);
  assert.equal(r.status, 'ok', r.text);
  return r.lines.map((l) => `${l.toString('utf8')}\r\n`).join('');
}

describe('POP3 upstream connector against real Dovecot POP3 + oidc-provider', () => {
  let op: TestOP;
  let dv: Dovecot;
  let dvDown: Dovecot;
  let token: string;

  before(async () => {
    op = await startOP();
    const url = withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret);
    [dv, dvDown] = await Promise.all([
      startDovecot({ introspectionUrl: url, authDebug: true }),
      startDovecot({
        introspectionUrl: `http://dovecot:x@127.0.0.1:${await freePort()}/token/introspection`,
      }),
    ]);
    await dv.seed(USER, SEED);
    token = (await op.mintGrant(USER)).access_token;
  });
  after(async () => {
    await Promise.all([dv?.stop(), dvDown?.stop(), op?.close()]);
  });

  const logged = (fn: () => Promise<void>) => withDovecotLog(() => dv, fn);

  const target = (d: Dovecot, over: Record<string, unknown> = {}): UpstreamTarget =>
    resolveUpstream('pop3', {
      host: d.host,
      port: d.pop3sPort,
      tls: 'implicit',
      ca_file: d.caFile,
      servername: 'localhost',
      ...over,
    });

  const matrix = [
    { tls: 'implicit', mechanism: 'xoauth2' },
    { tls: 'implicit', mechanism: 'oauthbearer' },
    { tls: 'starttls', mechanism: 'xoauth2' },
    { tls: 'starttls', mechanism: 'oauthbearer' },
  ] as const;
  for (const m of matrix) {
    test(
      `${m.mechanism.toUpperCase()} over ${m.tls} TLS with a real OP token → authenticated, RETR gives the seed back`,
      logged(async () => {
        const port = m.tls === 'implicit' ? dv.pop3sPort : dv.pop3Port;
        const conn = await connector.connect(
          target(dv, { port, tls: m.tls, mechanism: m.mechanism }),
          labels,
        );
        assert.ok(conn.capabilities.includes('RESP-CODES'), conn.capabilities.join('|'));
        const sasl = conn.capabilities.find((c) => c.startsWith('SASL '));
        assert.match(sasl ?? '(no SASL line)', /\bXOAUTH2\b.*\bOAUTHBEARER\b/);
        assert.ok(!conn.capabilities.includes('STLS'), 'capabilities are the ones sent over TLS');
        const up = await conn.authenticate(USER, token);
        assert.equal((up.socket as TLSSocket).encrypted, true);
        assert.equal(await retr(up), SEED);
        up.socket.destroy();
      }),
    );
  }

  test(
    'a long bad token (AUTH, + , blob) → + JSON, empty line, -ERR [AUTH] → upstream_rejected; the same connection then authenticates',
    logged(async () => {
      const conn = await connector.connect(target(dv, { mechanism: 'xoauth2' }), labels);
      // Over 255 octets with the AUTH line: the blob goes after Dovecot's `+ ` prompt.
      await assert.rejects(conn.authenticate(USER, 'not-a-valid-token'.padEnd(400, 'x')), {
        reason: 'upstream_rejected',
        detail: 'json_401',
      });
      assert.equal(conn.reusable, true);
      const up = await conn.authenticate(USER, token);
      assert.equal(await retr(up), SEED);
      up.socket.destroy();
    }),
  );

  test(
    'OAUTHBEARER bad token over STLS → upstream_rejected (invalid_token), still reusable',
    logged(async () => {
      const conn = await connector.connect(
        target(dv, { port: dv.pop3Port, tls: 'starttls', mechanism: 'oauthbearer' }),
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

  test('Dovecot’s certificate without its CA → tls_verify on implicit TLS and on STLS', async () => {
    await assert.rejects(connector.connect(target(dv, { ca_file: undefined }), labels), {
      reason: 'upstream_unavailable',
      detail: 'tls_verify',
    });
    await assert.rejects(
      connector.connect(target(dv, { ca_file: undefined, port: dv.pop3Port, tls: 'starttls' }), labels),
      { reason: 'upstream_unavailable', detail: 'tls_verify' },
    );
  });
});
