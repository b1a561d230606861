import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { tokenlessGrant } from '../../../src/oauth/flows/store-grant.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';

// Real oidc-providers issuing 5 s and 20 s access tokens; the broker alone runs on a fake clock.
const TOKENS = {
  refresh_before_seconds: 300,
  refresh_before_fraction: 0.1,
  cache_entries: 100,
  credential_cache_seconds: 300,
};

const ops: TestOP[] = [];
const stores: SqliteGrantStore[] = [];
after(async () => {
  for (const s of stores) await s.close();
  for (const o of ops) await o.close();
});

/** A broker on `op` and one account whose grant holds only a refresh token (as after `grant import`). */
async function setup(op: TestOP, sub: string) {
  const store = await SqliteGrantStore.open(':memory:', Keyring.random());
  stores.push(store);
  const metrics = createMetrics({ defaults: false });
  let clock = Date.now();
  const provider = providerSchema.parse(opProviderConfig(op));
  const broker = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({ short: provider }),
    tokens: TOKENS,
    metrics,
    now: () => clock,
  });
  const account = await store.createAccount({ login: sub, upstreamUser: sub, provider: 'short' }, 'test');
  const g = await op.mintGrant(sub);
  await store.putGrant(
    account.id,
    { ...tokenlessGrant('refresh_token'), refreshToken: g.refresh_token },
    'test',
  );
  const shortLived = async () =>
    (await metrics.shortLivedTokens.get()).values.find((v) => v.labels.provider === 'short')?.value ?? 0;
  return {
    broker,
    account,
    shortLived,
    now: () => clock,
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

describe('short-lived access tokens', () => {
  let op5: TestOP;
  let op20: TestOP;
  before(async () => {
    op5 = await startOP({ accessTokenTtl: 5 });
    op20 = await startOP({ accessTokenTtl: 20 });
    ops.push(op5, op20);
  });

  test('5 s tokens: a login gets the fresh token (the fixed 5 s floor refused every one), counted per provider', async () => {
    const { broker, account, shortLived, now } = await setup(op5, 'brief@example.com');
    const t = await broker.getAccessToken(account);
    assert.equal(t.expiresAt - now(), 5000, 'the token the OP just issued');
    assert.equal((await op5.introspect(t.token)).active, true);
    assert.equal(await shortLived(), 1);
  });

  test('5 s tokens: handed out until a quarter of the lifetime remains, then replaced', async () => {
    const { broker, account, advance, now } = await setup(op5, 'quarter@example.com');
    const first = await broker.getAccessToken(account);
    advance(2000); // before the half-way refresh point
    let before = op5.tokenRequests();
    assert.equal((await broker.getAccessToken(account)).token, first.token);
    assert.equal(op5.tokenRequests(), before, 'no refresh before half-way');
    advance(1800); // 1.2 s left: under the 1.25 s floor of a 5 s token
    before = op5.tokenRequests();
    const next = await broker.getAccessToken(account);
    assert.notEqual(next.token, first.token);
    assert.equal(next.expiresAt - now(), 5000);
    assert.equal(op5.tokenRequests(), before + 1);
  });

  test('20 s tokens keep the fixed 5 s floor and are not counted as short-lived', async () => {
    const { broker, account, advance, shortLived } = await setup(op20, 'twenty@example.com');
    const first = await broker.getAccessToken(account);
    advance(15_500); // 4.5 s left: under 5 s, though more than a quarter of 20 s would allow
    const next = await broker.getAccessToken(account);
    assert.notEqual(next.token, first.token);
    assert.equal(await shortLived(), 0);
  });
});
