import assert from 'node:assert/strict';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError } from '../../../src/errors.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { tokenlessGrant } from '../../../src/oauth/flows/store-grant.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

/**
 * private_key_jwt client authentication (Microsoft certificate credentials) against the real
 * oidc-provider: the OP trusts only the public keys in the client's JWKS and verifies every
 * client assertion the proxy signs with private_key_file.
 */
describe('private_key_jwt client authentication against oidc-provider', () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const stranger = generateKeyPairSync('rsa', { modulusLength: 2048 });
  let op: TestOP;
  let dir: string;

  before(async () => {
    const jwk = (k: KeyObject) => k.export({ format: 'jwk' }) as Record<string, unknown>;
    op = await startOP({
      clientCredentialsSubject: 'app@example.com',
      privateKeyJwtClient: { jwks: { keys: [jwk(rsa.publicKey), jwk(ec.publicKey)] } },
    });
    dir = mkdtempSync(join(tmpdir(), 'iop-pkjwt-'));
  });
  after(async () => {
    await op?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const brokerFor = async (key: KeyObject, name: string) => {
    const file = join(dir, `${name}.pem`);
    writeFileSync(file, key.export({ type: 'pkcs8', format: 'pem' }).toString(), { mode: 0o600 });
    const provider = providerSchema.parse({
      issuer: op.issuer,
      client_id: op.jwtClient?.id,
      client_auth: 'private_key_jwt',
      private_key_file: file,
      app_only_scope: 'mail',
      allow_insecure_http: true,
      timeout_seconds: 5,
    });
    const store = await memoryDbStore();
    const broker = new OAuthTokenBroker({
      store,
      providers: createProviderRegistry({ ms: provider }),
      tokens: {
        refresh_before_seconds: 300,
        refresh_before_fraction: 0.1,
        cache_entries: 100,
        credential_cache_seconds: 300,
      },
    });
    const account = async (mailbox: string) => {
      const a = await store.createAccount({ login: mailbox, upstreamUser: mailbox, provider: 'ms' }, 't');
      await store.putGrant(a.id, tokenlessGrant('client_credentials'), 't');
      return a;
    };
    return { broker, account };
  };

  for (const [label, key] of [
    ['RSA (RS256)', rsa.privateKey],
    ['P-256 (ES256)', ec.privateKey],
  ] as const) {
    test(`client-credentials token signed with the ${label} key in the client's JWKS`, async () => {
      const { broker, account } = await brokerFor(key, label.slice(0, 3));
      const before = op.tokenRequests();
      const token = await broker.getAccessToken(await account('app@example.com'));
      assert.equal(op.tokenRequests(), before + 1);
      const info = await op.introspect(token.token);
      assert.equal(info.active, true);
      assert.equal(info.client_id, 'proxy-jwt');
      assert.equal(info.sub, 'app@example.com');
    });
  }

  test('an assertion signed with a key the client does not hold is refused (token_unavailable)', async () => {
    const { broker, account } = await brokerFor(stranger.privateKey, 'stranger');
    const before = op.tokenRequests();
    await assert.rejects(
      broker.getAccessToken(await account('app@example.com')),
      (e: unknown) => isProxyError(e) && e.reason === 'token_unavailable',
    );
    // The OP was asked (and said invalid_client): the failure is its verdict, not a local error.
    assert.ok(op.tokenRequests() > before);
  });
});
