import assert from 'node:assert/strict';
import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError } from '../../../src/errors.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { tokenlessGrant } from '../../../src/oauth/flows/store-grant.js';
import { createJwtBearerHandler, JWT_BEARER_GRANT } from '../../../src/oauth/jwt-bearer.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import type { GrantStore } from '../../../src/store/types.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

/**
 * Google's token endpoint cannot run here, so this is a fake (as the issue asks): it checks
 * the RS256 signature against the service account's public key and the RFC 7523 claims
 * (iss, sub, scope, aud, exp) the way Google documents them, then issues a token naming `sub`.
 */
describe('JWT-bearer grant (Google service account, domain-wide delegation)', () => {
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const other = generateKeyPairSync('rsa', { modulusLength: 2048 });
  let server: Server;
  let tokenUrl: string;
  let dir: string;
  const seen: Record<string, unknown>[] = [];

  before(async () => {
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const p = new URLSearchParams(body);
        const fail = (error: string) => {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error }));
        };
        if (p.get('grant_type') !== JWT_BEARER_GRANT || req.headers.authorization)
          return fail('invalid_request');
        const [h, c, sig] = (p.get('assertion') ?? '').split('.');
        const header = JSON.parse(Buffer.from(h ?? '', 'base64url').toString()) as Record<string, unknown>;
        const claims = JSON.parse(Buffer.from(c ?? '', 'base64url').toString()) as Record<string, unknown>;
        const ok = verify('sha256', Buffer.from(`${h}.${c}`), publicKey, Buffer.from(sig ?? '', 'base64url'));
        const now = Date.now() / 1000;
        if (header.alg !== 'RS256' || header.kid !== 'key-1' || !ok) return fail('invalid_grant');
        if (claims.iss !== 'proxy@project.iam.gserviceaccount.com' || claims.aud !== tokenUrl)
          return fail('invalid_grant');
        if (claims.scope !== 'https://mail.google.com/' || typeof claims.sub !== 'string')
          return fail('invalid_grant');
        if (typeof claims.exp !== 'number' || claims.exp <= now || claims.exp - Number(claims.iat) > 3600)
          return fail('invalid_grant');
        seen.push(claims);
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ access_token: `at-for-${claims.sub}`, token_type: 'Bearer', expires_in: 3599 }),
        );
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    tokenUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
    dir = mkdtempSync(join(tmpdir(), 'iop-sa-'));
  });
  after(async () => {
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  const brokerWith = async (key: string) => {
    const file = join(dir, `sa-${seen.length}-${Math.random()}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        type: 'service_account',
        client_email: 'proxy@project.iam.gserviceaccount.com',
        client_id: '1234567890',
        private_key_id: 'key-1',
        private_key: key,
        token_uri: tokenUrl,
      }),
    );
    const provider = providerSchema.parse({
      preset: 'google',
      service_account_file: file,
      token_endpoint: tokenUrl,
      app_only_scope: 'https://mail.google.com/',
      allow_insecure_http: true,
      timeout_seconds: 3,
    });
    const store = await memoryDbStore();
    const broker = new OAuthTokenBroker({
      store,
      providers: createProviderRegistry({ google: provider }),
      tokens: {
        refresh_before_seconds: 300,
        refresh_before_fraction: 0.1,
        cache_entries: 100,
        credential_cache_seconds: 300,
      },
      handlers: [createJwtBearerHandler()],
    });
    return { store, broker };
  };

  const addAccount = async (store: GrantStore, mailbox: string) => {
    const a = await store.createAccount({ login: mailbox, upstreamUser: mailbox, provider: 'google' }, 't');
    await store.putGrant(a.id, tokenlessGrant('jwt_bearer'), 't');
    return a;
  };

  test('each mailbox gets its own token, asserted with sub = the mailbox and signed with the key file', async () => {
    const { store, broker } = await brokerWith(
      privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    );
    const a = await addAccount(store, 'ann@corp.example');
    const b = await addAccount(store, 'ben@corp.example');
    assert.equal((await broker.getAccessToken(a)).token, 'at-for-ann@corp.example');
    assert.equal((await broker.getAccessToken(b)).token, 'at-for-ben@corp.example');
    // Cached per account: a second login does not sign another assertion.
    const before = seen.length;
    assert.equal((await broker.getAccessToken(a)).token, 'at-for-ann@corp.example');
    assert.equal(seen.length, before);
    assert.deepEqual(
      seen.slice(-2).map((c) => c.sub),
      ['ann@corp.example', 'ben@corp.example'],
    );
  });

  test('an assertion signed with the wrong key is refused: the login sees token_unavailable', async () => {
    const { store, broker } = await brokerWith(
      other.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    );
    const a = await addAccount(store, 'cat@corp.example');
    await assert.rejects(
      broker.getAccessToken(a),
      (e) => isProxyError(e) && e.reason === 'token_unavailable',
    );
  });
});
