import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ProxyApp, startProxy } from '../../../src/app/app.js';
import { parseConfig } from '../../../src/config/load.js';
import { createLogger } from '../../../src/log.js';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { get } from '../observability/scrape.js';
import { UNREACHABLE_PROVIDER_YAML } from './local-provider.js';

const TOKEN = 'scrape-token-7f3a9c';
const PASSWORD = 'status-pass-4b2e1d';
const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
const STATUS_OK = { authorization: basic('admin', PASSWORD) };
const METRICS_OK = { authorization: `Bearer ${TOKEN}` };

/** The proxy as `serve` starts it (SQLite, no upstream needed) with `admin` extra YAML. */
async function start(dir: string, admin: string, limiter = ''): Promise<ProxyApp> {
  const yaml = `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.1/32] }
admin:
  address: 127.0.0.1
  port: 0
  metrics_bearer_token: ${TOKEN}
  admin_password: ${PASSWORD}
  connect_page: true
  public_url: https://mail.example.test
  ${admin}
${limiter}
${UNREACHABLE_PROVIDER_YAML}`;
  const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
  return startProxy(config, { log: createLogger({ level: 'silent' }) });
}

describe('admin.connect_port: the self-service pages on a server of their own', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-connect-port-'));
  let app: ProxyApp;
  let adminPort: number;
  let connectPort: number;

  before(async () => {
    app = await start(dir, 'connect_port: 0\n  connect_address: 127.0.0.1');
    adminPort = app.adminAddress.port;
    assert.ok(app.connectAddress, 'connect server bound');
    connectPort = app.connectAddress.port;
    assert.notEqual(connectPort, adminPort);
  });
  after(async () => {
    await app?.close({ drainMs: 0 });
    rmSync(dir, { recursive: true, force: true });
  });

  test('connect port serves /connect, /connect/start and /oauth/callback', async () => {
    const page = await get(connectPort, '/connect');
    assert.equal(page.status, 200);
    assert.match(page.body, /Sign in with local/);
    const start = await get(connectPort, '/connect/start?provider=local');
    assert.equal(start.status, 302);
    assert.match(String(start.headers.location), /^http:\/\/127\.0\.0\.1:9\/auth\?/);
    // Served (not 404): without the state cookie the callback explains the sign-in expired.
    const cb = await get(connectPort, '/oauth/callback?code=x&state=y');
    assert.equal(cb.status, 400);
    assert.match(cb.body, /Sign-in expired/);
  });

  test('connect port answers 404 for /metrics, /status, /healthz and /readyz, even with credentials', async () => {
    assert.equal((await get(connectPort, '/metrics', METRICS_OK)).status, 404);
    assert.equal((await get(connectPort, '/status', STATUS_OK)).status, 404);
    assert.equal((await get(connectPort, '/healthz')).status, 404);
    assert.equal((await get(connectPort, '/readyz')).status, 404);
  });

  test('admin port no longer serves the self-service paths but keeps /metrics and /status', async () => {
    assert.equal((await get(adminPort, '/connect')).status, 404);
    assert.equal((await get(adminPort, '/connect/start?provider=local')).status, 404);
    assert.equal((await get(adminPort, '/oauth/callback?code=x&state=y')).status, 404);
    assert.equal((await get(adminPort, '/metrics', METRICS_OK)).status, 200);
    assert.equal((await get(adminPort, '/status', STATUS_OK)).status, 200);
    assert.equal((await get(adminPort, '/healthz')).status, 200);
  });

  test('close() frees the connect port', async () => {
    const port = connectPort;
    await app.close({ drainMs: 0 });
    await assert.rejects(
      new Promise<void>((resolve, reject) =>
        connect(port, '127.0.0.1', () => resolve()).once('error', reject),
      ),
      /ECONNREFUSED/,
    );
    // after() closes again; a second close must be harmless, so start a fresh app for it.
    app = await start(dir, '');
    assert.equal(app.connectAddress, undefined);
    assert.equal((await get(app.adminAddress.port, '/connect')).status, 200, 'default: on the admin port');
  });
});

describe('admin HTTP credentials: failed attempts per client address are limited', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-admin-limit-'));
  let app: ProxyApp;
  let port: number;

  before(async () => {
    app = await start(dir, '', 'limiter: { max_failures: 3, window_seconds: 120 }');
    port = app.adminAddress.port;
  });
  after(async () => {
    await app?.close({ drainMs: 0 });
    rmSync(dir, { recursive: true, force: true });
  });

  test('3 wrong /status or /metrics attempts → 429 with Retry-After, even for the right password', async () => {
    // A browser's first request carries no credentials: those do not count.
    for (let i = 0; i < 5; i++) assert.equal((await get(port, '/status')).status, 401);
    assert.equal((await get(port, '/status', STATUS_OK)).status, 200);

    assert.equal((await get(port, '/status', { authorization: basic('admin', 'guess1') })).status, 401);
    assert.equal((await get(port, '/metrics', { authorization: 'Bearer guess2' })).status, 401);
    assert.equal((await get(port, '/status', { authorization: basic('admin', 'guess3') })).status, 401);

    for (const [path, headers] of [
      ['/status', STATUS_OK],
      ['/metrics', METRICS_OK],
      ['/status', { authorization: basic('admin', 'guess4') }],
    ] as const) {
      const r = await get(port, path, headers);
      assert.equal(r.status, 429, `${path} locked out`);
      const wait = Number(r.headers['retry-after']);
      assert.ok(wait >= 1 && wait <= 120, `Retry-After ${r.headers['retry-after']}`);
    }
    // Unauthenticated endpoints stay reachable for probes from the same address.
    assert.equal((await get(port, '/healthz')).status, 200);
    const refused = await app.metrics.registry.getSingleMetricAsString('imap_proxy_limiter_actions_total');
    assert.match(refused, /imap_proxy_limiter_actions_total\{scope="admin",action="refused"\} 3/);
  });
});
