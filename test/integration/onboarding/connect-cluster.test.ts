import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { type ProxyProcess, startProxyProcess } from '../../bench/setup.js';
import { freePort } from '../../helpers/ports.js';
import { get } from '../observability/scrape.js';
import { UNREACHABLE_PROVIDER_YAML } from './local-provider.js';

/**
 * `serve` with `workers: 2` and admin.connect_port as a real child process: both workers
 * listen on the connect port without clashing (node:cluster shares the one socket), the
 * primary's admin port keeps /metrics and does not serve the self-service paths.
 */

const ROOT = join(import.meta.dirname, '..', '..', '..');
const TOKEN = 'cluster-scrape-token';
let dir: string;
let proxy: ProxyProcess | undefined;
let ports: { admin: number; connect: number };

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'iop-connect-cluster-'));
  ports = { admin: await freePort(), connect: await freePort() };
  const file = join(dir, 'proxy.yaml');
  writeFileSync(
    file,
    `data_dir: ${JSON.stringify(dir)}
workers: 2
log: { level: info, format: json }
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: ${await freePort()}, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.1/32] }
limiter: { max_failures: 2 }
admin:
  address: 127.0.0.1
  port: ${ports.admin}
  connect_address: 127.0.0.1
  connect_port: ${ports.connect}
  connect_page: true
  public_url: https://mail.example.test
  metrics_bearer_token: ${TOKEN}
${UNREACHABLE_PROVIDER_YAML}`,
  );
  proxy = await startProxyProcess(file, {
    cwd: ROOT,
    entry: join(ROOT, 'src', 'cli.ts'),
    nodeArgs: ['--import', 'tsx'],
  });
});

after(async () => {
  await proxy?.stop(5000);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('workers: 2 — the connect port serves /connect from the workers; the primary keeps /metrics', async () => {
  // Round-robin hands successive connections to both workers; every one must answer.
  for (let i = 0; i < 6; i++) {
    const r = await get(ports.connect, '/connect', { connection: 'close' });
    assert.equal(r.status, 200);
    assert.match(r.body, /Sign in with local/);
  }
  assert.equal((await get(ports.connect, '/connect/start?provider=local')).status, 302);
  assert.equal((await get(ports.connect, '/metrics', { authorization: `Bearer ${TOKEN}` })).status, 404);
  assert.equal((await get(ports.admin, '/connect')).status, 404);
  assert.equal((await get(ports.admin, '/metrics', { authorization: `Bearer ${TOKEN}` })).status, 200);
  const log = proxy?.output() ?? '';
  assert.equal(log.match(/self-service HTTP listening/g)?.length, 2, 'one per worker');
  assert.doesNotMatch(log, /EADDRINUSE/);
});

test('workers: 2 — the primary /metrics locks out an address after failed tokens', async () => {
  for (let i = 0; i < 2; i++) {
    assert.equal((await get(ports.admin, '/metrics', { authorization: 'Bearer wrong' })).status, 401);
  }
  const r = await get(ports.admin, '/metrics', { authorization: `Bearer ${TOKEN}` });
  assert.equal(r.status, 429);
  assert.ok(Number(r.headers['retry-after']) > 0);
});
