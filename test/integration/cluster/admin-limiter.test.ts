import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { freePort, type ProxyProcess, startProxyProcess, writeProxyConfig } from '../../bench/setup.js';
import { parseScrape } from '../observability/scrape.js';

/**
 * Multi-worker mode: the primary alone answers the admin port, so the admin guessing limiter
 * runs there; its refusals must show on the merged /metrics like every worker's counters.
 */

const ROOT = join(import.meta.dirname, '..', '..', '..');
const TOKEN = 'scrape-token-c41d7e';

let dir: string;
let proxy: ProxyProcess | undefined;
let adminPort: number;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'iop-cluster-limiter-'));
  adminPort = await freePort();
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, '-----BEGIN CERTIFICATE-----\n');
  const file = writeProxyConfig({
    dir,
    workers: 2,
    plainPort: await freePort(),
    imapsPort: await freePort(),
    adminPort,
    // Never contacted: no login happens in this test.
    issuer: 'http://127.0.0.1:9',
    clientId: 'proxy',
    clientSecret: 'unused',
    upstream: { port: 9, caFile: ca },
    encryptionKey: generateKeyLine('k1'),
  });
  const yaml = readFileSync(file, 'utf8').replace(
    `admin: { address: 127.0.0.1, port: ${adminPort} }`,
    `admin: { address: 127.0.0.1, port: ${adminPort}, metrics_bearer_token: ${TOKEN} }\nlimiter: { max_failures: 2 }`,
  );
  assert.match(yaml, /metrics_bearer_token/);
  writeFileSync(file, yaml);
  proxy = await startProxyProcess(file, {
    cwd: ROOT,
    entry: join(ROOT, 'src', 'cli.ts'),
    nodeArgs: ['--import', 'tsx'],
  });
});

after(async () => {
  await proxy?.stop(10_000);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** GET /metrics from a chosen loopback source address (the limiter counts per address). */
function metrics(from: string, authorization: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: adminPort,
        path: '/metrics',
        localAddress: from,
        headers: { authorization },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.setTimeout(15_000, () => req.destroy(new Error('no answer from /metrics within 15 s')));
    req.once('error', reject);
    req.end();
  });
}

test('workers: 2 — admin lockouts on the primary are counted in the merged /metrics', async () => {
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) statuses.push((await metrics('127.0.0.2', 'Bearer wrong')).status);
  assert.deepEqual(statuses, [401, 401, 429, 429], 'two failures allowed, then locked out');

  const scrape = await metrics('127.0.0.1', `Bearer ${TOKEN}`);
  assert.equal(scrape.status, 200, 'another address is not locked out');
  const samples = parseScrape(scrape.body).filter((s) => s.name === 'imap_proxy_limiter_actions_total');
  const admin = samples.filter((s) => s.labels.scope === 'admin');
  assert.deepEqual(
    admin.map((s) => [s.labels.action, s.labels.worker, s.value]),
    [['refused', 'primary', 2]],
    scrape.body
      .split('\n')
      .filter((l) => l.includes('limiter_actions'))
      .join('\n'),
  );
  // One family header: the text format allows a metric's HELP and TYPE once.
  assert.equal(scrape.body.match(/^# TYPE imap_proxy_limiter_actions_total /gm)?.length, 1);
  // Workers' series are still there.
  assert.match(scrape.body, /^imap_proxy_nodejs_eventloop_lag_p99_seconds\{worker="1"\}/m);
});
