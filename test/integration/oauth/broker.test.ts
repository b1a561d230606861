import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError } from '../../../src/errors.js';
import { createLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { AccountRecord } from '../../../src/store/types.js';
import { startOP, storedGrant, type TestOP } from '../../helpers/op.js';

// Every test here talks to a real oidc-provider over loopback; time moves on a fake clock
// that only the broker sees, so refresh-ahead and expiry are reached without sleeping.

let op: TestOP;
before(async () => {
  op = await startOP({
    accessTokenTtl: 3600,
    clientCredentials: true,
    clientCredentialsSubject: 'shared@example.com',
  });
});
const stores: SqliteGrantStore[] = [];
after(async () => {
  for (const s of stores) await s.close();
  await op.close();
});

const TOKENS = {
  refresh_before_seconds: 300,
  refresh_before_fraction: 0.1,
  cache_entries: 1000,
  credential_cache_seconds: 300,
};

async function setup(opts: { discovery?: boolean; publicUrl?: string } = {}) {
  const store = await SqliteGrantStore.open(':memory:', Keyring.random());
  stores.push(store);
  const metrics = createMetrics({ defaults: false });
  let clock = Date.now();
  const logStream = new PassThrough();
  let logs = '';
  logStream.on('data', (c: Buffer) => {
    logs += c.toString();
  });
  const provider = providerSchema.parse({
    client_id: op.client.id,
    client_secret: op.client.secret,
    allow_insecure_http: true,
    timeout_seconds: 5,
    ...(opts.discovery === false ? { token_endpoint: `${op.issuer}/token` } : { issuer: op.issuer }),
  });
  const broker = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({ test: provider }),
    tokens: TOKENS,
    metrics,
    log: createLogger({ destination: logStream, level: 'debug', format: 'json' }),
    publicUrl: opts.publicUrl,
    backoff: { initialMs: 30_000, maxMs: 300_000 },
    now: () => clock,
  });
  const advance = (ms: number) => {
    clock += ms;
  };
  const addAccount = async (
    sub: string,
  ): Promise<{ account: AccountRecord; refresh: string; access: string }> => {
    const account = await store.createAccount({ login: sub, upstreamUser: sub, provider: 'test' }, 'test');
    const g = await op.mintGrant(sub);
    await store.putGrant(account.id, storedGrant(g, clock), 'test');
    return { account, refresh: g.refresh_token, access: g.access_token };
  };
  const refreshes = async (result: string) =>
    (await metrics.tokenRefreshes.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
  return { store, broker, metrics, advance, addAccount, refreshes, logs: () => logs };
}

test('cold start uses the persisted access token without calling the token endpoint', async () => {
  const { broker, addAccount } = await setup();
  const { account, access } = await addAccount('cold@example.com');
  const before = op.tokenRequests();
  const t = await broker.getAccessToken(account);
  assert.equal(t.token, access);
  assert.equal(op.tokenRequests(), before);
});

test('expired token: refresh works, rotation is persisted before use, the old refresh token is dead', async () => {
  const { broker, store, advance, addAccount, refreshes } = await setup({ discovery: false });
  const { account, refresh, access } = await addAccount('rotate@example.com');
  advance(3600_000);
  const before = op.tokenRequests();
  const t = await broker.getAccessToken(account);
  assert.equal(op.tokenRequests(), before + 1);
  assert.notEqual(t.token, access);
  assert.equal((await op.introspect(t.token)).sub, 'rotate@example.com');
  const g = await store.getGrant(account.id);
  assert.ok(g);
  assert.equal(g.accessToken, t.token, 'new access token persisted');
  assert.ok(g.refreshToken && g.refreshToken !== refresh, 'rotated refresh token persisted');
  assert.equal((await op.introspect(refresh)).active, false, 'old refresh token no longer usable');
  assert.equal(await refreshes('success'), 1);
});

test('1,000 concurrent requests for one expired grant make exactly one token-endpoint call', async () => {
  const { broker, advance, addAccount } = await setup();
  const { account } = await addAccount('herd@example.com');
  advance(3600_000);
  const before = op.tokenRequests();
  const all = await Promise.all(Array.from({ length: 1000 }, () => broker.getAccessToken(account)));
  assert.equal(op.tokenRequests() - before, 1);
  assert.equal(new Set(all.map((t) => t.token)).size, 1);
});

test('ahead of expiry the still-valid token is served while one background refresh runs', async () => {
  const { broker, store, advance, addAccount } = await setup();
  const { account, access } = await addAccount('ahead@example.com');
  assert.equal((await broker.getAccessToken(account)).token, access);
  advance(3600_000 - 200_000); // 200 s left: inside the 360 s refresh-ahead window
  const before = op.tokenRequests();
  const served = await Promise.all(Array.from({ length: 20 }, () => broker.getAccessToken(account)));
  assert.ok(
    served.every((t) => t.token === access),
    'callers get the current token at once',
  );
  await broker.idle();
  assert.equal(op.tokenRequests() - before, 1);
  const next = await broker.getAccessToken(account);
  assert.notEqual(next.token, access);
  assert.equal((await store.getGrant(account.id))?.accessToken, next.token);
});

test('revocation at the OP marks the grant needs_consent (kept, audited) and names where to reconnect', async () => {
  const { broker, store, advance, addAccount, refreshes, logs } = await setup({
    publicUrl: 'https://mail.example.com/',
  });
  const { account, refresh, access } = await addAccount('revoked@example.com');
  await op.revoke(refresh);
  advance(3600_000);
  const err = await broker.getAccessToken(account).catch((e: unknown) => e);
  assert.ok(isProxyError(err));
  assert.equal(err.reason, 'needs_consent');
  assert.equal(err.clientText, 'Reconnect the mailbox at https://mail.example.com/connect');
  const g = await store.getGrant(account.id);
  assert.equal(g?.status, 'needs_consent');
  assert.equal(g?.refreshToken, refresh, 'grant is kept, not deleted');
  assert.ok((await store.listAudit(account.id)).some((e) => e.action === 'grant.needs_consent'));
  assert.equal(await refreshes('invalid_grant'), 1);
  assert.match(logs(), /invalid_grant/);
  assert.ok(!logs().includes(refresh) && !logs().includes(access), 'logs never carry tokens');
  // Later calls fail at once, without asking the OP again.
  const before = op.tokenRequests();
  await assert.rejects(
    broker.getAccessToken(account),
    (e: unknown) => isProxyError(e) && e.reason === 'needs_consent',
  );
  assert.equal(op.tokenRequests(), before);
});

test('no grant → no_grant; needs_consent without public_url tells the user to ask the admin', async () => {
  const { broker, store, addAccount } = await setup();
  const bare = await store.createAccount(
    { login: 'bare@example.com', upstreamUser: 'bare@example.com', provider: 'test' },
    't',
  );
  await assert.rejects(
    broker.getAccessToken(bare),
    (e: unknown) => isProxyError(e) && e.reason === 'no_grant',
  );
  const { account } = await addAccount('stale@example.com');
  const g = await store.getGrant(account.id);
  assert.ok(g);
  await store.putGrant(account.id, { ...g, status: 'needs_consent' }, 't');
  await assert.rejects(
    broker.getAccessToken(account),
    (e: unknown) =>
      isProxyError(e) &&
      e.reason === 'needs_consent' &&
      e.clientText === 'Ask your administrator to reconnect the mailbox',
  );
});

test('client-credentials tokens are fetched once per provider and shared by its accounts', async () => {
  const { broker, store } = await setup();
  const accounts: AccountRecord[] = [];
  for (const who of ['app1@example.com', 'app2@example.com']) {
    const a = await store.createAccount({ login: who, upstreamUser: who, provider: 'test' }, 't');
    await store.putGrant(
      a.id,
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
      't',
    );
    accounts.push(a);
  }
  const before = op.tokenRequests();
  const [t1, t2, ...more] = await Promise.all(accounts.map((a) => broker.getAccessToken(a)));
  assert.equal(op.tokenRequests() - before, 1);
  assert.ok(t1 && t2 && more.length === 0, 'one token per account');
  assert.equal(t1.token, t2.token);
  const info = await op.introspect(t1.token);
  assert.equal(info.active, true);
  assert.equal(info.sub, 'shared@example.com');
});

test('reportRejected and forceRefresh make the next call refresh', async () => {
  const { broker, addAccount } = await setup();
  const { account, access } = await addAccount('reject@example.com');
  assert.equal((await broker.getAccessToken(account)).token, access);
  broker.reportRejected(account, access);
  const before = op.tokenRequests();
  const second = await broker.getAccessToken(account);
  assert.notEqual(second.token, access);
  assert.equal(op.tokenRequests(), before + 1);
  const third = await broker.getAccessToken(account, { forceRefresh: true });
  assert.notEqual(third.token, second.token);
  assert.equal(op.tokenRequests(), before + 2);
});

test('OP down: a still-valid token is served; once expired → token_unavailable, then backoff', async () => {
  const { broker, advance, addAccount, refreshes } = await setup();
  const { account, access } = await addAccount('down@example.com');
  assert.equal((await broker.getAccessToken(account)).token, access);
  op.setDown(true);
  try {
    advance(3600_000 - 200_000); // inside the refresh window, token still valid
    assert.equal((await broker.getAccessToken(account)).token, access);
    await broker.idle();
    assert.equal(await refreshes('unavailable'), 1);
    // During the 30 s backoff the valid token keeps being served without new attempts.
    assert.equal((await broker.getAccessToken(account)).token, access);
    await broker.idle();
    assert.equal(await refreshes('unavailable'), 1);

    advance(200_000); // now expired
    const err = await broker.getAccessToken(account).catch((e: unknown) => e);
    assert.ok(isProxyError(err));
    assert.equal(err.reason, 'token_unavailable');
    const attempts = await refreshes('unavailable');
    // Backoff: fail fast, the OP is not asked again.
    await assert.rejects(
      broker.getAccessToken(account),
      (e: unknown) => isProxyError(e) && e.detail === 'backoff',
    );
    assert.equal(await refreshes('unavailable'), attempts);
  } finally {
    op.setDown(false);
  }
  advance(600_000); // past the backoff: the OP is back and the grant refreshes
  const t = await broker.getAccessToken(account);
  assert.notEqual(t.token, access);
});
