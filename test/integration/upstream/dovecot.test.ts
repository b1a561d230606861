import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { resolveUpstream } from '../../../src/config/presets.js';
import type { AuthenticatedUpstream, UpstreamTarget } from '../../../src/core/upstream.js';
import { createUpstreamConnector } from '../../../src/protocols/imap/upstream.js';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';

// Real components: Dovecot 2.3 validates each token by introspection at a real oidc-provider.

const USER = 'alice@example.com';
const connector = createUpstreamConnector();
const labels = { provider: 'dovecot' };

function withCredentials(url: string, id: string, secret: string): string {
  const u = new URL(url);
  u.username = id;
  u.password = secret;
  return u.toString();
}

/** Reads from the handed-over socket until a line tagged `tag` arrives. */
async function command(up: AuthenticatedUpstream, tag: string, cmd: string): Promise<string> {
  let text = up.buffered.toString();
  up.socket.write(`${tag} ${cmd}\r\n`);
  up.socket.resume();
  for await (const chunk of up.socket) {
    text += (chunk as Buffer).toString();
    if (new RegExp(`^${tag} `, 'm').test(text)) break;
  }
  return text;
}

describe('upstream connector against real Dovecot + oidc-provider', () => {
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
    await dv.seed(USER, 'From: bob@example.com\r\nSubject: seeded\r\n\r\nhello\r\n');
    token = (await op.mintGrant(USER)).access_token;
  });
  after(async () => {
    await Promise.all([dv?.stop(), dvDown?.stop(), op?.close()]);
  });

  /** On failure, Dovecot's own log explains why (auth_debug is on). */
  const logged =
    (fn: () => Promise<void>) =>
    async (t: import('node:test').TestContext): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        t.diagnostic(`dovecot log tail:\n${dv.readLog().slice(-4000)}`);
        throw err;
      }
    };

  const target = (d: Dovecot, over: Partial<UpstreamTarget>): UpstreamTarget =>
    resolveUpstream('imap', {
      host: d.host,
      port: d.imapsPort,
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
      `${m.mechanism.toUpperCase()} over ${m.tls} TLS with a real OP token → logged in, mailbox readable`,
      logged(async () => {
        const port = m.tls === 'implicit' ? dv.imapsPort : dv.imapPort;
        const conn = await connector.connect(
          target(dv, { port, tls: m.tls, mechanism: m.mechanism }),
          labels,
        );
        assert.ok(conn.capabilities.includes('AUTH=XOAUTH2'));
        const up = await conn.authenticate(USER, token);
        // Post-login capabilities (Dovecot adds these only after login).
        assert.ok(up.capabilities.includes('MOVE'), up.capabilities.join(' '));
        assert.ok(!up.capabilities.some((c) => c.startsWith('AUTH=')));
        const reply = await command(up, 'S1', 'SELECT INBOX');
        assert.match(reply, /^\* 1 EXISTS/m);
        assert.match(reply, /^S1 OK/m);
        up.socket.destroy();
      }),
    );
  }

  test(
    'bad token → continuation JSON path → upstream_rejected; the same connection then logs in',
    logged(async () => {
      const conn = await connector.connect(target(dv, { mechanism: 'xoauth2' }), labels);
      await assert.rejects(conn.authenticate(USER, 'not-a-valid-token'), {
        reason: 'upstream_rejected',
        detail: 'json_401',
      });
      assert.equal(conn.reusable, true);
      const up = await conn.authenticate(USER, token);
      assert.ok(up.capabilities.length > 0);
      up.socket.destroy();
    }),
  );

  test(
    'OAUTHBEARER bad token → upstream_rejected (invalid_token)',
    logged(async () => {
      const conn = await connector.connect(target(dv, { mechanism: 'oauthbearer' }), labels);
      await assert.rejects(conn.authenticate(USER, 'not-a-valid-token'), {
        reason: 'upstream_rejected',
        detail: 'json_invalid_token',
      });
      conn.destroy();
    }),
  );

  test(
    'revoked token → upstream_rejected',
    logged(async () => {
      const grant = await op.mintGrant('carol@example.com');
      await op.revoke(grant.access_token);
      const conn = await connector.connect(target(dv, {}), labels);
      await assert.rejects(conn.authenticate('carol@example.com', grant.access_token), {
        reason: 'upstream_rejected',
      });
      conn.destroy();
    }),
  );

  test('introspection endpoint down → upstream_unavailable ([UNAVAILABLE]), no retry-worthy rejection', async () => {
    const conn = await connector.connect(target(dvDown, {}), labels);
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
      connector.connect(target(dv, { ca_file: undefined, port: dv.imapPort, tls: 'starttls' }), labels),
      { reason: 'upstream_unavailable', detail: 'tls_verify' },
    );
  });
});
