import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError } from '../../../src/errors.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import type { AccountRecord } from '../../../src/store/types.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

// The token endpoint's outages, through a small fake (node:http): a real OP cannot be made to
// go down, freeze or answer 503 on demand. The breaker turns each outage into fast refusals
// and recovers within one probe once the endpoint answers again.

type Behaviour = (req: IncomingMessage, res: ServerResponse) => void;
const ok: Behaviour = (_q, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ access_token: `at-${Math.random()}`, token_type: 'Bearer', expires_in: 3600 }));
};
const down: Behaviour = (_q, res) => {
  res.writeHead(503, { 'content-type': 'text/plain' });
  res.end('down');
};
const frozen: Behaviour = () => undefined;
let behaviour: Behaviour = ok;
let hits = 0;
const server = createServer((req, res) => {
  hits++;
  req.resume();
  req.on('end', () => behaviour(req, res));
});
let url = '';
before(async () => {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
});
after(
  () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
);

const OPEN_MS = 400;

async function setup(accounts: number) {
  const store = await memoryDbStore();
  const metrics = createMetrics({ defaults: false });
  const broker = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({
      fake: providerSchema.parse({
        client_id: 'proxy',
        client_secret: 's3cret',
        token_endpoint: url,
        allow_insecure_http: true,
        timeout_seconds: 0.3,
      }),
    }),
    tokens: {
      refresh_before_seconds: 300,
      refresh_before_fraction: 0.1,
      cache_entries: 100,
      credential_cache_seconds: 300,
    },
    metrics,
    breaker: { failures: 3, openMs: OPEN_MS, maxOpenMs: 2000 },
  });
  const list: AccountRecord[] = [];
  for (let i = 0; i < accounts; i++) {
    const a = await store.createAccount(
      { login: `u${i}@example.com`, upstreamUser: `u${i}@example.com`, provider: 'fake' },
      't',
    );
    await store.putGrant(
      a.id,
      {
        kind: 'refresh_token',
        status: 'active',
        refreshToken: `rt-${i}`,
        accessToken: null,
        accessTokenExpiresAt: null,
        scope: null,
        lastRefreshAt: null,
        lastError: null,
      },
      't',
    );
    list.push(a);
  }
  /** How long one token request takes and how it ends. */
  const timed = async (a: AccountRecord) => {
    const t0 = performance.now();
    const r = await broker.getAccessToken(a).then(
      () => 'ok',
      (e: unknown) => (isProxyError(e) ? `${e.reason}/${e.detail}` : String(e)),
    );
    return { r, ms: performance.now() - t0 };
  };
  const state = async () =>
    (await metrics.breakerState.get()).values.find((v) => v.labels.provider === 'fake')?.value;
  return { store, broker, metrics, accounts: list, timed, state };
}

test('endpoint down: opens after 3 failures, then refreshes fail at once without a request; back up: recovered by one probe', async () => {
  const { store, accounts, timed, state } = await setup(6);
  behaviour = ok;
  // A cached token is never affected by the breaker.
  assert.equal((await timed(accounts[5]!)).r, 'ok');
  behaviour = down;
  for (const a of accounts.slice(0, 3)) assert.equal((await timed(a)).r, 'token_unavailable/http_5xx');
  assert.equal(await state(), 2, 'open');
  const before = hits;
  const fast = await timed(accounts[3]!);
  assert.equal(fast.r, 'token_unavailable/breaker_open');
  assert.ok(fast.ms < 1000, `refused in ${fast.ms.toFixed(0)} ms`);
  assert.equal(hits, before, 'no request while open');
  assert.equal((await timed(accounts[5]!)).r, 'ok', 'the cached token still serves');
  // The endpoint comes back; the first login after the open period probes and succeeds.
  behaviour = ok;
  const back = performance.now();
  let first: number | undefined;
  while (first === undefined && performance.now() - back < 5000) {
    const t = await timed(accounts[0]!);
    if (t.r === 'ok') first = performance.now() - back;
    else await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(
    first !== undefined && first < OPEN_MS + 1000,
    `first success ${first?.toFixed(0)} ms after recovery`,
  );
  assert.equal(await state(), 0, 'closed');
  // Every account refreshes at once now: no per-grant back-off left over from the outage.
  for (const a of accounts.slice(1, 5)) assert.equal((await timed(a)).r, 'ok');
  for (const a of accounts)
    assert.equal((await store.getGrant(a.id))?.status, 'active', 'no grant lost to the outage');
});

test('endpoint frozen: each of the first requests waits its timeout, then refreshes fail in well under a second', async () => {
  const { accounts, timed } = await setup(6);
  behaviour = frozen;
  for (const a of accounts.slice(0, 3)) {
    const t = await timed(a);
    assert.equal(t.r, 'token_unavailable/timeout');
  }
  for (const a of accounts.slice(3)) {
    const t = await timed(a);
    assert.equal(t.r, 'token_unavailable/breaker_open');
    assert.ok(t.ms < 100, `refused in ${t.ms.toFixed(0)} ms`);
  }
  behaviour = ok;
});

test('a 429 with Retry-After opens the breaker for as long as the server asked', async () => {
  const { accounts, timed, state } = await setup(2);
  behaviour = (_q, res) => {
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' });
    res.end('{"error":"slow_down"}');
  };
  assert.equal((await timed(accounts[0]!)).r, 'token_unavailable/http_429');
  assert.equal(await state(), 2, 'open after one throttled answer');
  behaviour = ok;
  assert.equal((await timed(accounts[1]!)).r, 'token_unavailable/breaker_open');
  await new Promise((r) => setTimeout(r, 1050));
  assert.equal((await timed(accounts[1]!)).r, 'ok');
});
