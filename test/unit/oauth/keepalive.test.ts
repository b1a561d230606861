import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { configSchema, providerSchema } from '../../../src/config/schema.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { GrantKeepalive, keepaliveSettings } from '../../../src/oauth/keepalive.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import type { AccessToken } from '../../../src/oauth/types.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { AccountRecord } from '../../../src/store/types.js';
import { until } from '../../helpers/deadline.js';
import { startOP, type TestOP } from '../../helpers/op.js';

// A real oidc-provider issues and refreshes every grant; idle grants are made by backdating
// lastRefreshAt in the store, and the spacing is shortened to 100 ms so the rate bound is visible.

const DAY = 86_400_000;
let op: TestOP;
before(async () => {
  op = await startOP({ accessTokenTtl: 3600 });
});
const stores: SqliteGrantStore[] = [];
const runs: GrantKeepalive[] = [];
after(async () => {
  for (const k of runs) await k.stop();
  for (const s of stores) await s.close();
  await op.close();
});

async function setup() {
  const store = await SqliteGrantStore.open(':memory:', Keyring.random());
  stores.push(store);
  const metrics = createMetrics({ defaults: false });
  const provider = providerSchema.parse({
    issuer: op.issuer,
    client_id: op.client.id,
    client_secret: op.client.secret,
    allow_insecure_http: true,
  });
  const real = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({ test: provider }),
    tokens: configSchema.shape.tokens.parse({}),
    metrics,
  });
  const calls: { at: number; login: string }[] = [];
  const broker = {
    getAccessToken(account: AccountRecord, opts?: { forceRefresh?: boolean }): Promise<AccessToken> {
      calls.push({ at: performance.now(), login: account.logins[0] ?? '' });
      return real.getAccessToken(account, opts);
    },
  };
  /** An account whose grant was last refreshed `ageDays` ago. */
  const add = async (login: string, ageDays: number) => {
    const account = await store.createAccount({ login, upstreamUser: login, provider: 'test' }, 'test');
    const g = await op.mintGrant(login);
    const at = Date.now() - ageDays * DAY;
    await store.putGrant(
      account.id,
      {
        kind: 'refresh_token',
        status: 'active',
        refreshToken: g.refresh_token,
        accessToken: g.access_token,
        accessTokenExpiresAt: at + 3600_000,
        scope: null,
        lastRefreshAt: at,
        lastError: null,
      },
      'test',
    );
    return { account, refresh: g.refresh_token };
  };
  const counted = async (result: string) =>
    (await metrics.grantKeepalive.get()).values.find((v) => v.labels.result === result)?.value ?? 0;
  const keepalive = (settings: { perMinute: number; scanIntervalMs?: number }, firstScanMs = 0) => {
    const k = new GrantKeepalive({
      store,
      broker,
      settings: { idleMs: 14 * DAY, scanIntervalMs: 3600_000, ...settings },
      metrics,
      firstScanMs,
    });
    runs.push(k);
    return k;
  };
  return { store, calls, add, counted, keepalive };
}

test('idle grants are refreshed one at a time; fresh, disabled and needs-consent ones are left alone', async () => {
  const { store, calls, add, counted, keepalive } = await setup();
  const idle = await Promise.all(['a', 'b', 'c'].map((n) => add(`idle-${n}@example.com`, 30)));
  const fresh = await add('fresh@example.com', 1);
  const disabled = await add('disabled@example.com', 60);
  await store.setAccountStatus(disabled.account.id, 'disabled', 'test');
  const consent = await add('consent@example.com', 60);
  await store.withGrantLock(consent.account.id, (tx) => tx.update({ status: 'needs_consent' }));
  const requests = op.tokenRequests();

  const started = performance.now();
  const k = keepalive({ perMinute: 600 }).start();
  await until(async () => (await counted('refreshed')) === 3, 10_000, 'three keepalive refreshes');
  await k.stop();

  assert.equal(op.tokenRequests() - requests, 3, 'one token request per idle grant, none for the others');
  assert.deepEqual(calls.map((c) => c.login).sort(), idle.map((i) => i.account.logins[0]).sort());
  for (const { account, refresh } of idle) {
    const g = await store.getGrant(account.id);
    assert.ok(g?.lastRefreshAt && g.lastRefreshAt > Date.now() - 60_000, 'lastRefreshAt moved to now');
    assert.notEqual(g.refreshToken, refresh, 'the rotated refresh token was stored');
  }
  for (const { account } of [fresh, disabled, consent]) {
    const g = await store.getGrant(account.id);
    assert.ok(g?.lastRefreshAt && g.lastRefreshAt < Date.now() - DAY / 2, `${account.logins[0]} untouched`);
  }
  // 600 a minute: 100 ms apart at least, the first one too (no burst at start).
  const times = [started, ...calls.map((c) => c.at)];
  for (let i = 1; i < times.length; i++) {
    const gap = (times[i] ?? 0) - (times[i - 1] ?? 0);
    assert.ok(gap >= 99, `refresh ${i} came ${gap.toFixed(1)} ms after the one before`);
  }
});

test('a scan queues at most what one scan interval can refresh', async () => {
  const { add, keepalive } = await setup();
  await add('old-1@example.com', 20);
  await add('old-2@example.com', 80);
  await add('old-3@example.com', 50);
  // 60 a minute over a 2 s interval: room for 2.
  const k = keepalive({ perMinute: 60, scanIntervalMs: 2000 });
  assert.equal(await k.scan(), 2);
  assert.equal(await k.scan(), 0, 'queued grants are not queued again, and the queue is full');
  await k.stop();
});

test('a revoked grant is counted needs_consent (the broker marks it); an outage is counted failed and marks nothing', async () => {
  const { store, add, counted, keepalive } = await setup();
  const revoked = await add('revoked-ka@example.com', 30);
  await op.revoke(revoked.refresh);
  let k = keepalive({ perMinute: 600 }).start();
  await until(async () => (await counted('needs_consent')) === 1, 10_000, 'needs_consent counted');
  await k.stop();
  assert.equal((await store.getGrant(revoked.account.id))?.status, 'needs_consent');

  const down = await add('outage-ka@example.com', 30);
  op.setDown(true);
  try {
    k = keepalive({ perMinute: 600 }).start();
    await until(async () => (await counted('failed')) === 1, 10_000, 'failure counted');
    await k.stop();
  } finally {
    op.setDown(false);
  }
  const g = await store.getGrant(down.account.id);
  assert.equal(g?.status, 'active', 'an outage never marks a grant needs_consent');
  assert.equal(await counted('refreshed'), 0);
});

test('keepalive is configurable off, and the defaults are 14 days at 10 a minute', () => {
  const on = configSchema.shape.keepalive.parse({});
  assert.deepEqual(keepaliveSettings(on), { idleMs: 14 * DAY, perMinute: 10, scanIntervalMs: 3600_000 });
  assert.equal(keepaliveSettings(configSchema.shape.keepalive.parse({ enabled: false })), null);
  assert.throws(() => configSchema.shape.keepalive.parse({ per_minute: 0 }));
});
