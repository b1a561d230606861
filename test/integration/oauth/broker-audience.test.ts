import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError } from '../../../src/errors.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import type { TokenAudience } from '../../../src/oauth/types.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { AccountRecord } from '../../../src/store/types.js';
import { startOP, storedGrant, type TestOP } from '../../helpers/op.js';

// Tokens for a second resource (Graph beside the mail servers) from one grant, against a real
// oidc-provider that rotates refresh tokens and revokes a grant whose old refresh token is reused:
// an unserialized refresh of the two resources would lose the grant here.

const GRAPH = 'https://graph.test';
const AUDIENCE: TokenAudience = { key: 'graph', resource: GRAPH, scope: 'mail.send mail.readwrite' };
const TOKENS = {
  refresh_before_seconds: 300,
  refresh_before_fraction: 0.1,
  cache_entries: 1000,
  credential_cache_seconds: 300,
};

let op: TestOP;
const stores: SqliteGrantStore[] = [];
before(async () => {
  op = await startOP({
    accessTokenTtl: 3600,
    clientCredentials: true,
    resources: { [GRAPH]: { scope: 'mail.send mail.readwrite', appRoles: 'Mail.Send' } },
  });
});
after(async () => {
  for (const s of stores) await s.close();
  await op.close();
});

async function setup() {
  const store = await SqliteGrantStore.open(':memory:', Keyring.random());
  stores.push(store);
  let clock = Date.now();
  const provider = providerSchema.parse({
    client_id: op.client.id,
    client_secret: op.client.secret,
    allow_insecure_http: true,
    timeout_seconds: 5,
    issuer: op.issuer,
  });
  const metrics = createMetrics({ defaults: false });
  const broker = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({ test: provider }),
    tokens: TOKENS,
    metrics,
    publicUrl: 'https://proxy.example.test',
    now: () => clock,
  });
  const addAccount = async (sub: string, resources?: string[]): Promise<AccountRecord> => {
    const account = await store.createAccount({ login: sub, upstreamUser: sub, provider: 'test' }, 'test');
    const g = await op.mintGrant(sub, resources ? { resources } : {});
    await store.putGrant(account.id, storedGrant(g, clock), 'test');
    return account;
  };
  return { store, broker, addAccount, advance: (ms: number) => (clock += ms) };
}

test("a Graph token is minted from the mailbox's grant, cached apart, and the stored main token is untouched", async () => {
  const { store, broker, addAccount } = await setup();
  const account = await addAccount('graph@example.com');
  const storedBefore = await store.getGrant(account.id);
  const main = await broker.getAccessToken(account);
  assert.equal(main.token, storedBefore?.accessToken, 'the main token comes from the store');
  assert.equal((await op.introspect(main.token)).aud, undefined, 'the main token has no Graph audience');

  const calls = op.tokenRequests();
  const graph = await broker.getAccessToken(account, { audience: AUDIENCE });
  assert.equal(op.tokenRequests(), calls + 1, 'one refresh for the Graph token');
  assert.notEqual(graph.token, main.token);
  const info = await op.introspect(graph.token);
  assert.equal(info.active, true);
  assert.equal(info.aud, GRAPH);
  assert.equal(info.sub, 'graph@example.com');

  assert.equal((await broker.getAccessToken(account, { audience: AUDIENCE })).token, graph.token);
  assert.equal((await broker.getAccessToken(account)).token, main.token);
  assert.equal(op.tokenRequests(), calls + 1, 'both served from their caches');

  const after = await store.getGrant(account.id);
  assert.equal(
    after?.accessToken,
    storedBefore?.accessToken,
    'the stored access token is still the main one',
  );
  assert.notEqual(after?.refreshToken, storedBefore?.refreshToken, 'the rotated refresh token was persisted');
  assert.equal((await op.introspect(storedBefore!.refreshToken!)).active, false);
});

test('refreshes of both resources at once are serialized: rotation with reuse detection keeps the grant', async () => {
  const { store, broker, addAccount, advance } = await setup();
  const account = await addAccount('both@example.com');
  for (let round = 0; round < 5; round++) {
    advance(3600_000);
    const got = await Promise.all([
      ...Array.from({ length: 10 }, () => broker.getAccessToken(account)),
      ...Array.from({ length: 10 }, () => broker.getAccessToken(account, { audience: AUDIENCE })),
    ]);
    assert.equal(new Set(got.slice(0, 10).map((t) => t.token)).size, 1, 'one main token per round');
    assert.equal(new Set(got.slice(10).map((t) => t.token)).size, 1, 'one Graph token per round');
    assert.equal((await op.introspect(got[10]!.token)).aud, GRAPH);
  }
  const g = await store.getGrant(account.id);
  assert.equal(g?.status, 'active');
  assert.equal(
    (await op.introspect(g!.refreshToken!)).active,
    true,
    'the stored refresh token is the live one',
  );
});

test('a rejected Graph token is refreshed on the next call; the main token stays', async () => {
  const { broker, addAccount } = await setup();
  const account = await addAccount('rejected@example.com');
  const main = await broker.getAccessToken(account);
  const graph = await broker.getAccessToken(account, { audience: AUDIENCE });
  broker.reportRejected(account, graph.token, AUDIENCE);
  const fresh = await broker.getAccessToken(account, { audience: AUDIENCE });
  assert.notEqual(fresh.token, graph.token);
  assert.equal((await broker.getAccessToken(account)).token, main.token);
});

test('a grant never allowed the Graph resource: scope_missing with where to reconnect, and the grant stays active', async () => {
  const { store, broker, addAccount } = await setup();
  const account = await addAccount('nograph@example.com', []);
  await assert.rejects(
    broker.getAccessToken(account, { audience: AUDIENCE }),
    (err: unknown) =>
      isProxyError(err) &&
      err.reason === 'scope_missing' &&
      /Reconnect the mailbox at https:\/\/proxy\.example\.test\/connect/.test(err.clientText ?? ''),
  );
  assert.equal((await store.getGrant(account.id))?.status, 'active');
  assert.ok((await broker.getAccessToken(account)).token, 'the mail servers still get tokens');
});

test('app-only grants get a client-credentials token for the Graph resource', async () => {
  const { store, broker } = await setup();
  const account = await store.createAccount(
    { login: 'app@example.com', upstreamUser: 'app@example.com', provider: 'test' },
    'test',
  );
  await store.putGrant(
    account.id,
    {
      kind: 'client_credentials',
      status: 'active',
      refreshToken: null,
      accessToken: null,
      accessTokenExpiresAt: null,
      scope: null,
      lastRefreshAt: null,
      lastError: null,
    },
    'test',
  );
  const audience: TokenAudience = { key: 'graph', resource: GRAPH, appOnlyScope: `${GRAPH}/.default` };
  const t = await broker.getAccessToken(account, { audience });
  const info = await op.introspect(t.token);
  assert.equal(info.aud, GRAPH);
  assert.deepEqual(info.roles, ['Mail.Send']);
  const plain = await broker.getAccessToken(account);
  assert.notEqual(plain.token, t.token, 'app-only tokens are cached per resource too');
});
