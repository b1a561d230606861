import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import {
  freePort,
  type ProxyProcess,
  seedAccounts,
  startProxyProcess,
  writeProxyConfig,
} from '../../bench/setup.js';
import { type FakeUpstream, startFakeUpstream } from '../../helpers/fake-upstream.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { startOP, type TestOP } from '../../helpers/op.js';

/**
 * `serve` with `workers: 2` as a real child process: two workers share the listeners, the
 * primary alone serves aggregated /metrics, and SIGTERM to the primary stops everything.
 * The upstream is the scripted fake (it accepts any token; what is under test is the proxy's
 * process model and the cross-process refresh lock, whose token requests the real OP counts).
 */

const ROOT = join(import.meta.dirname, '..', '..', '..');
const LOGINS = 12;

let op: TestOP;
let fake: FakeUpstream;
let dir: string;
let proxy: ProxyProcess | undefined;
let ports: { plain: number; admin: number };
let password: string;

before(async () => {
  op = await startOP({ accessTokenTtl: 3600 });
  fake = await startFakeUpstream({ tls: 'implicit' });
  dir = mkdtempSync(join(tmpdir(), 'iop-cluster-'));
  ports = { plain: await freePort(), admin: await freePort() };
  const configFile = writeProxyConfig({
    dir,
    workers: 2,
    plainPort: ports.plain,
    imapsPort: await freePort(),
    adminPort: ports.admin,
    issuer: op.issuer,
    clientId: op.client.id,
    clientSecret: op.client.secret,
    upstream: { port: fake.port, caFile: fake.caFile },
    encryptionKey: generateKeyLine('k1'),
  });
  const grant = await op.mintGrant('storm@example.com');
  // The stored access token has already expired: the first logins in every worker must refresh.
  const pw = await seedAccounts(configFile, [
    {
      login: 'storm',
      upstreamUser: 'storm@example.com',
      refreshToken: grant.refresh_token,
      accessToken: grant.access_token,
      accessTokenExpiresAt: Date.now() - 1000,
    },
  ]);
  password = pw.get('storm')!;
  proxy = await startProxyProcess(configFile, {
    cwd: ROOT,
    entry: join(ROOT, 'src', 'cli.ts'),
    nodeArgs: ['--import', 'tsx'],
  });
});

after(async () => {
  await proxy?.stop(5000);
  await fake?.close();
  await op?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function login(): Promise<string> {
  const c = await RawImapClient.connect(ports.plain);
  try {
    await c.readLine();
    const reply = await c.command('a', `LOGIN storm ${password}`);
    return reply.at(-1) ?? '';
  } finally {
    c.close();
  }
}

function workerPids(output: string): number[] {
  return [...output.matchAll(/"pid":(\d+)[^\n]*"msg":"worker ready"/g)].map((m) => Number(m[1]));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

test('two workers share the listener; an expired token is refreshed once across both processes', async () => {
  assert.equal(workerPids(proxy!.output()).length, 2, proxy!.output().slice(-2000));
  const replies = await Promise.all(Array.from({ length: LOGINS }, () => login()));
  for (const r of replies) assert.match(r, /^a OK /);
  assert.equal(op.tokenRequests(), 1, 'one refresh for the account, whichever worker asked first');

  const res = await fetch(`http://127.0.0.1:${ports.admin}/metrics`);
  assert.equal(res.status, 200);
  const text = await res.text();
  const perWorker = [
    ...text.matchAll(/^imap_proxy_logins_total\{protocol="imap",result="success",worker="(\d+)"\} (\d+)/gm),
  ];
  assert.equal(perWorker.length, 2, 'both workers took logins (round-robin) and report under their label');
  assert.equal(
    perWorker.reduce((n, m) => n + Number(m[2]), 0),
    LOGINS,
  );
  assert.match(text, /^imap_proxy_nodejs_eventloop_lag_p99_seconds\{worker="1"\}/m);
  const ready = await fetch(`http://127.0.0.1:${ports.admin}/readyz`);
  assert.equal(ready.status, 200);
  // The primary keeps the store open and serves /status (refused here: no admin_password set).
  const status = await fetch(`http://127.0.0.1:${ports.admin}/status`);
  assert.equal(status.status, 403);
  assert.match(await status.text(), /admin_password/);
});

test('SIGTERM to the primary stops every worker and exits 0', async () => {
  const pids = workerPids(proxy!.output());
  assert.equal(pids.length, 2);
  const code = await proxy!.stop(15_000);
  assert.equal(code, 0, proxy!.output().slice(-2000));
  for (const pid of pids) assert.equal(alive(pid), false, `worker ${pid} is gone`);
  proxy = undefined;
});
