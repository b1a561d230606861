import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { configSchema, providerSchema } from '../../../src/config/schema.js';
import { createLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import { safeReason } from '../../../src/notify/event.js';
import { watchGrantChanges } from '../../../src/notify/transitions.js';
import { Notifier } from '../../../src/notify/webhook.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import { startOP, type TestOP } from '../../helpers/op.js';

// A real HTTP receiver on 127.0.0.1 plays the webhook endpoint (generic, Slack, Teams, ntfy
// alike: each is a POST to a URL); a real oidc-provider revokes and re-issues the grant.

const SECRET = 'whsec-0123456789abcdef';
const PUBLIC_URL = 'https://mail-proxy.example.com/';

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** Answers each request with the next status of `script` (the last one repeats), or never when 0. */
async function receiver(script: number[]) {
  const got: Received[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => {
      got.push({ headers: req.headers, body, at: Date.now() });
      const status = script[Math.min(got.length - 1, script.length - 1)] ?? 200;
      if (status === 0) return; // hang: a receiver that never answers
      res.writeHead(status).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook/s3cr3t-path`, got };
}

const servers: Server[] = [];
const stores: SqliteGrantStore[] = [];
const notifiers: Notifier[] = [];
let op: TestOP;
before(async () => {
  op = await startOP();
});
after(async () => {
  for (const n of notifiers) await n.close();
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  for (const s of stores) await s.close();
  await op.close();
});

async function setup(webhooks: Record<string, unknown>[], policy: Record<string, unknown> = {}) {
  const store = await SqliteGrantStore.open(':memory:', Keyring.random());
  stores.push(store);
  const metrics = createMetrics({ defaults: false });
  const logStream = new PassThrough();
  let logs = '';
  logStream.on('data', (c: Buffer) => {
    logs += c.toString();
  });
  const log = createLogger({ destination: logStream, level: 'debug', format: 'json' });
  const config = configSchema.shape.notifications.parse({ retry_initial_seconds: 0.02, ...policy, webhooks });
  const notifier = new Notifier({ store, config, publicUrl: PUBLIC_URL, metrics, log });
  notifiers.push(notifier);
  const account = await store.createAccount(
    { login: 'scanner', upstreamUser: 'scanner@example.com', provider: 'test' },
    'test',
  );
  const counted = async (result: string) =>
    (await metrics.notifications.get()).values
      .filter((v) => v.labels.result === result)
      .reduce((n, v) => n + v.value, 0);
  return { store, metrics, notifier, account, counted, log, logs: () => logs };
}

/** An active refresh-token grant as onboarding stores it. */
function refreshGrant(refreshToken: string) {
  return {
    kind: 'refresh_token' as const,
    status: 'active' as const,
    refreshToken,
    accessToken: null,
    accessTokenExpiresAt: null,
    scope: null,
    lastRefreshAt: Date.now(),
    lastError: null,
  };
}

function verify(r: Received): boolean {
  const ts = String(r.headers['x-signature-timestamp']);
  const want = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(`${ts}.${r.body}`).digest('hex')}`);
  const got = Buffer.from(String(r.headers['x-signature']));
  return got.length === want.length && timingSafeEqual(got, want);
}

test('json webhook: the event with login, mailbox, provider, bounded reason and reconnect URL, HMAC-signed over timestamp and body', async () => {
  const rx = await receiver([200]);
  const { notifier, account, counted } = await setup([{ name: 'ops', url: rx.url, secret: SECRET }]);
  const jwt = `eyJhbGciOiJSUzI1NiJ9.${'a'.repeat(120)}.${'b'.repeat(80)}`;
  notifier.grantChanged(
    account.id,
    'grant.needs_consent',
    `invalid_grant: token ${jwt} expired\n${'x '.repeat(400)}`,
  );
  await until(() => rx.got.length === 1, 5000, 'the webhook request');
  const [r] = rx.got;
  assert.ok(r);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.ok(verify(r), 'X-Signature verifies with the shared secret');
  assert.ok(
    Math.abs(Number(r.headers['x-signature-timestamp']) - Date.now() / 1000) < 30,
    'timestamp is now',
  );
  const tampered = { ...r, body: r.body.replace('scanner@', 'other@') };
  assert.equal(verify(tampered), false, 'a changed body does not verify');
  assert.equal(
    verify({ ...r, headers: { ...r.headers, 'x-signature-timestamp': '1' } }),
    false,
    'nor an old timestamp',
  );
  const body = JSON.parse(r.body) as Record<string, unknown>;
  assert.equal(body.event, 'grant.needs_consent');
  assert.equal(body.login, 'scanner');
  assert.equal(body.mailbox, 'scanner@example.com');
  assert.equal(body.provider, 'test');
  assert.equal(body.reconnect_url, 'https://mail-proxy.example.com/connect');
  assert.equal(body.id, r.headers['x-webhook-id']);
  assert.ok(!Number.isNaN(Date.parse(String(body.time))));
  const reason = String(body.reason);
  assert.match(reason, /^invalid_grant: token \[redacted\] expired/);
  assert.ok(reason.length <= 300, 'reason is bounded');
  assert.ok(!r.body.includes(jwt.slice(0, 40)), 'no token in the body');
  // The receiver has the request before the notifier has read its answer and counted it.
  await until(async () => (await counted('sent')) === 1, 5000, 'the delivery to be counted');
});

test('retried after 500s with the same id and a fresh signature, then delivered once', async () => {
  const rx = await receiver([500, 503, 200]);
  const { notifier, account, counted } = await setup([{ name: 'ops', url: rx.url, secret: SECRET }]);
  notifier.grantChanged(account.id, 'grant.recovered', null);
  await until(async () => (await counted('sent')) === 1, 5000, 'delivery after two 5xx');
  assert.equal(rx.got.length, 3);
  assert.equal(new Set(rx.got.map((r) => r.headers['x-webhook-id'])).size, 1, 'one event id across retries');
  assert.ok(rx.got.every(verify));
  const gaps = rx.got.slice(1).map((r, i) => r.at - (rx.got[i]?.at ?? 0));
  assert.ok((gaps[0] ?? 0) >= 9, 'a retry waits (jittered 10-20 ms for the first)');
  assert.equal(JSON.parse(rx.got[2]?.body ?? '{}').event, 'grant.recovered');
});

test('gives up after max_attempts, and after max_retry_seconds; a 4xx is not retried; nothing secret is logged', async () => {
  const down = await receiver([503]);
  const refusing = await receiver([404]);
  const slow = await receiver([500]);
  const { notifier, account, counted, logs } = await setup(
    [
      { name: 'down', url: down.url, secret: SECRET },
      { name: 'refusing', url: refusing.url, headers: { Authorization: 'Bearer tk_ntfy_secret' } },
    ],
    { max_attempts: 4 },
  );
  notifier.grantChanged(account.id, 'grant.needs_consent', 'invalid_grant');
  await until(async () => (await counted('failed')) === 2, 5000, 'both given up');
  assert.equal(down.got.length, 4, 'exactly max_attempts requests');
  assert.equal(refusing.got.length, 1, 'a 404 is not retried');
  assert.equal(refusing.got[0]?.headers.authorization, 'Bearer tk_ntfy_secret', 'extra headers are sent');

  // 0.3 s of retry time with a 0.2 s first delay: the second retry would pass the bound.
  const bounded = await setup([{ name: 'slow', url: slow.url }], {
    max_attempts: 20,
    retry_initial_seconds: 0.2,
    max_retry_seconds: 0.3,
  });
  bounded.notifier.grantChanged(bounded.account.id, 'grant.needs_consent', 'invalid_grant');
  await until(async () => (await bounded.counted('failed')) === 1, 5000, 'given up by time');
  assert.ok(slow.got.length <= 2, `${slow.got.length} attempts within 0.3 s of retry time`);

  const all = logs() + bounded.logs();
  assert.match(all, /webhook delivery given up/);
  for (const secret of [SECRET, 's3cr3t-path', 'tk_ntfy_secret', '127.0.0.1:']) {
    assert.ok(!all.includes(secret), `the log does not contain ${secret}`);
  }
});

test('a receiver that never answers slows nothing: grantChanged returns at once, a full queue drops and counts', async () => {
  const hang = await receiver([0]);
  const { store, notifier, account, counted } = await setup([{ name: 'hang', url: hang.url }], {
    queue_size: 1,
    timeout_seconds: 30,
  });
  // Five mailboxes: one change of one grant is announced once.
  const ids = [account.id];
  for (let i = 1; i < 5; i++) {
    const a = await store.createAccount(
      { login: `scanner${i}`, upstreamUser: `scanner${i}@example.com`, provider: 'test' },
      'test',
    );
    ids.push(a.id);
  }
  const t0 = performance.now();
  for (const id of ids) notifier.grantChanged(id, 'grant.needs_consent', 'invalid_grant');
  assert.ok(performance.now() - t0 < 50, 'five events queued without waiting');
  await until(() => hang.got.length === 1, 5000, 'the first request to arrive');
  // One in flight, one queued, three dropped.
  await until(async () => (await counted('dropped')) === 3, 5000, 'three dropped');
  await withDeadline(notifier.close(), 5000, 'close aborting the hanging request');
  assert.equal(await counted('dropped'), 5, 'the in-flight and queued events are dropped at close');
});

test('formats: slack {text}, teams Adaptive Card, ntfy plain text with Title; each webhook only gets its events', async () => {
  const slack = await receiver([200]);
  const teams = await receiver([200]);
  const ntfy = await receiver([200]);
  const { notifier, account, counted } = await setup([
    { name: 'slack', url: slack.url, format: 'slack' },
    { name: 'teams', url: teams.url, format: 'teams' },
    { name: 'ntfy', url: ntfy.url, format: 'ntfy', events: ['grant.needs_consent'] },
  ]);
  notifier.grantChanged(account.id, 'grant.needs_consent', 'invalid_grant: AADSTS70008 expired');
  await until(async () => (await counted('sent')) === 3, 5000, 'three deliveries');
  notifier.grantChanged(account.id, 'grant.recovered', null);
  await until(async () => (await counted('sent')) === 5, 5000, 'recovery to slack and teams');

  const s = JSON.parse(slack.got[0]?.body ?? '{}') as { text: string };
  assert.deepEqual(Object.keys(s), ['text']);
  assert.match(s.text, /scanner@example\.com needs to be reconnected/);
  assert.match(s.text, /Reconnect it at https:\/\/mail-proxy\.example\.com\/connect/);
  assert.match(JSON.parse(slack.got[1]?.body ?? '{}').text, /reconnected/);

  const card = JSON.parse(teams.got[0]?.body ?? '{}');
  assert.equal(card.type, 'message');
  assert.equal(card.attachments[0].contentType, 'application/vnd.microsoft.card.adaptive');
  assert.equal(card.attachments[0].content.type, 'AdaptiveCard');
  assert.match(card.attachments[0].content.body[1].text, /AADSTS70008/);

  assert.equal(ntfy.got.length, 1, 'ntfy asked for needs_consent only');
  const n = ntfy.got[0];
  assert.match(String(n?.headers['content-type']), /^text\/plain/);
  assert.equal(n?.headers.title, 'Mailbox scanner@example.com needs to be reconnected');
  assert.equal(n?.headers.click, 'https://mail-proxy.example.com/connect');
  assert.equal(n?.headers.priority, 'high');
  assert.match(n?.body ?? '', /^The grant for scanner@example\.com \(login scanner, provider test\)/);
});

test('transitions: the broker marking a revoked grant needs_consent, and a reconnect, each send one event', async () => {
  const rx = await receiver([200]);
  const { store, notifier, account, counted, logs, log } = await setup([
    { name: 'ops', url: rx.url, secret: SECRET },
  ]);
  const g = await op.mintGrant('scanner@example.com');
  await store.putGrant(account.id, refreshGrant(g.refresh_token), 'test');
  const watched = watchGrantChanges(store, (id, event, reason) => notifier.grantChanged(id, event, reason));
  const broker = new OAuthTokenBroker({
    store: watched,
    providers: createProviderRegistry({
      test: providerSchema.parse({
        issuer: op.issuer,
        client_id: op.client.id,
        client_secret: op.client.secret,
        allow_insecure_http: true,
      }),
    }),
    tokens: configSchema.shape.tokens.parse({}),
    log,
  });
  await op.revoke(g.refresh_token);
  await assert.rejects(broker.getAccessToken(account), /invalid_grant|consent/);
  await assert.rejects(broker.getAccessToken(account), 'a second refusal changes nothing');
  await until(async () => (await counted('sent')) === 1, 5000, 'needs_consent delivered');

  // Reconnecting (onboarding stores a new grant) is the recovery.
  const again = await op.mintGrant('scanner@example.com');
  await watched.putGrant(account.id, refreshGrant(again.refresh_token), 'test');
  await until(async () => (await counted('sent')) === 2, 5000, 'recovered delivered');
  assert.deepEqual(
    rx.got.map((r) => JSON.parse(r.body).event),
    ['grant.needs_consent', 'grant.recovered'],
  );
  const first = JSON.parse(rx.got[0]?.body ?? '{}');
  assert.match(first.reason, /invalid_grant|grant/i);
  for (const secret of [g.refresh_token, again.refresh_token, g.access_token, op.client.secret, SECRET]) {
    assert.ok(!rx.got.some((r) => r.body.includes(secret)), 'no token or secret in any body');
    assert.ok(!logs().includes(secret), 'no token or secret in the log');
  }
});

test('reasons: token-like runs and Authorization values are cut, control characters flattened, length bounded', () => {
  assert.equal(safeReason('Bearer abc.def failed'), 'Bearer [redacted] failed');
  assert.equal(safeReason(`x ${'Zm9v'.repeat(10)} y`), 'x [redacted] y');
  assert.equal(safeReason('a\r\nb'), 'a b');
  assert.equal(safeReason(null), null);
  assert.equal(safeReason('z '.repeat(500))?.length, 300);
});
