import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { isProxyError, type ProxyError } from '../../../src/errors.js';
import { createMetrics } from '../../../src/metrics.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import type { GrantStore } from '../../../src/store/types.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

// Fault injection through a small fake token endpoint (node:http): a real OP cannot be made
// to hang, answer 5xx/429 with Retry-After, or send garbage JSON on demand.

type Behaviour = (req: IncomingMessage, res: ServerResponse) => void;
let behaviour: Behaviour = () => undefined;
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

const json =
  (status: number, body: unknown, headers: Record<string, string> = {}): Behaviour =>
  (_q, res) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };

async function setup(tokenUrl = url) {
  const store = await memoryDbStore();
  const metrics = createMetrics({ defaults: false });
  let clock = Date.now();
  const broker = new OAuthTokenBroker({
    store,
    providers: createProviderRegistry({
      fake: providerSchema.parse({
        client_id: 'proxy',
        client_secret: 's3cret',
        token_endpoint: tokenUrl,
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
    backoff: { initialMs: 1000, maxMs: 60_000 },
    now: () => clock,
  });
  const account = await store.createAccount(
    { login: 'u@example.com', upstreamUser: 'u@example.com', provider: 'fake' },
    't',
  );
  await store.putGrant(
    account.id,
    {
      kind: 'refresh_token',
      status: 'active',
      refreshToken: 'rt-original',
      accessToken: null,
      accessTokenExpiresAt: null,
      scope: null,
      lastRefreshAt: null,
      lastError: null,
    },
    't',
  );
  const failWith = async (): Promise<ProxyError> => {
    const err = await broker.getAccessToken(account).catch((e: unknown) => e);
    assert.ok(isProxyError(err), `expected a ProxyError, got ${String(err)}`);
    return err;
  };
  const results = async () =>
    Object.fromEntries((await metrics.tokenRefreshes.get()).values.map((v) => [v.labels.result, v.value]));
  return {
    store,
    broker,
    account,
    failWith,
    results,
    advance: (ms: number) => {
      clock += ms;
    },
  };
}

async function assertGrantUntouched(store: GrantStore, id: number, lastError: RegExp) {
  const g = await store.getGrant(id);
  assert.equal(g?.status, 'active');
  assert.equal(g?.refreshToken, 'rt-original');
  assert.match(g?.lastError ?? '', lastError);
}

test('timeout → token_unavailable/timeout, grant untouched except last_error', async () => {
  behaviour = () => undefined; // never answers
  const { store, account, failWith, results } = await setup();
  const err = await failWith();
  assert.equal(err.reason, 'token_unavailable');
  assert.equal(err.detail, 'timeout');
  assert.deepEqual(await results(), { timeout: 1 });
  await assertGrantUntouched(store, account.id, /timed out/);
});

test('HTTP 503 → http_5xx, then backoff doubles and the endpoint is not hammered', async () => {
  behaviour = (_q, res) => {
    res.writeHead(503, { 'content-type': 'text/html' });
    res.end('<h1>down</h1>');
  };
  const { store, account, failWith, results, advance } = await setup();
  const start = hits;
  assert.equal((await failWith()).detail, 'http_5xx');
  assert.equal((await failWith()).detail, 'backoff');
  advance(1001);
  assert.equal((await failWith()).detail, 'http_5xx');
  advance(1001); // second failure doubled the wait to 2 s
  assert.equal((await failWith()).detail, 'backoff');
  assert.equal(hits - start, 2);
  assert.deepEqual(await results(), { http_5xx: 2 });
  await assertGrantUntouched(store, account.id, /HTTP 503/);
});

test('HTTP 429 with Retry-After: no new attempt before the server said so', async () => {
  behaviour = json(429, { error: 'slow_down' }, { 'retry-after': '120' });
  const { failWith, results, advance } = await setup();
  const start = hits;
  assert.equal((await failWith()).detail, 'http_429');
  advance(119_000);
  // A Retry-After throttles the whole provider: its breaker stays open until then.
  assert.equal((await failWith()).detail, 'breaker_open');
  assert.equal(hits - start, 1);
  assert.deepEqual(await results(), { http_429: 1 });
});

test('after the Retry-After wait the same broker refreshes and clears the error', async () => {
  behaviour = json(429, { error: 'slow_down' }, { 'retry-after': '5' });
  const { broker, store, account, failWith, advance } = await setup();
  assert.equal((await failWith()).detail, 'http_429');
  behaviour = json(200, {
    access_token: 'at-new',
    token_type: 'Bearer',
    expires_in: 3600,
    refresh_token: 'rt-2',
  });
  advance(5001);
  assert.equal((await broker.getAccessToken(account)).token, 'at-new');
  const g = await store.getGrant(account.id);
  assert.equal(g?.refreshToken, 'rt-2');
  assert.equal(g?.lastError, null);
});

test('garbage JSON and a response without access_token → invalid_response', async () => {
  behaviour = (_q, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"access_token": ');
  };
  const first = await setup();
  assert.equal((await first.failWith()).detail, 'invalid_response');
  behaviour = json(200, { token_type: 'Bearer', expires_in: 3600 });
  const second = await setup();
  assert.equal((await second.failWith()).detail, 'invalid_response');
  await assertGrantUntouched(second.store, second.account.id, /./);
});

test('invalid_grant from the token endpoint → needs_consent, grant kept', async () => {
  behaviour = json(400, { error: 'invalid_grant', error_description: 'refresh token expired' });
  const { store, account, failWith, results } = await setup();
  assert.equal((await failWith()).reason, 'needs_consent');
  const g = await store.getGrant(account.id);
  assert.equal(g?.status, 'needs_consent');
  assert.equal(g?.refreshToken, 'rt-original');
  assert.deepEqual(await results(), { invalid_grant: 1 });
});

test('connection refused → unavailable', async () => {
  const dead = createServer();
  await new Promise<void>((r) => dead.listen(0, '127.0.0.1', r));
  const port = (dead.address() as AddressInfo).port;
  await new Promise<void>((r) => dead.close(() => r()));
  const { store, account, failWith, results } = await setup(`http://127.0.0.1:${port}/token`);
  const err = await failWith();
  assert.equal(err.reason, 'token_unavailable');
  assert.equal(err.detail, 'unavailable');
  assert.deepEqual(await results(), { unavailable: 1 });
  await assertGrantUntouched(store, account.id, /unreachable/);
});
