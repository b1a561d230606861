import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { parseConfig } from '../../../src/config/load.js';
import { configSchema } from '../../../src/config/schema.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import { watchGrantChanges } from '../../../src/notify/transitions.js';
import { Notifier } from '../../../src/notify/webhook.js';
import { generateKeyLine, Keyring } from '../../../src/store/crypto.js';
import { openStore } from '../../../src/store/index.js';
import { PostgresGrantStore } from '../../../src/store/postgres.js';
import type { GrantStore } from '../../../src/store/types.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { startPostgres, type TestPostgres } from '../../helpers/postgres.js';

// A grant status changed by someone other than the serving process (the CLI, another instance
// sharing PostgreSQL) is announced by the serving processes once between them: each looks at
// the store every watch interval, and a compare-and-set on the announced status picks one.

const ROOT = join(import.meta.dirname, '..', '..', '..');
const WATCH_MS = 150;
/** Long enough for every watcher to have looked several times. */
const QUIET_MS = WATCH_MS * 5;

let op: TestOP;
const servers: Server[] = [];
before(async () => {
  op = await startOP();
});
after(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  await op.close();
});

/** A webhook receiver on 127.0.0.1 that answers 200 and keeps each body. */
async function receiver() {
  const got: Array<Record<string, unknown>> = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => {
      got.push(JSON.parse(body) as Record<string, unknown>);
      res.writeHead(200).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  servers.push(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, got };
}

/** Fails if `cond` stops holding within `ms` (a duplicate arriving late). */
async function stays(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    assert.ok(cond(), what);
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.ok(cond(), what);
}

/** What the serving process's token broker does when the provider refuses the grant. */
async function markNeedsConsent(watched: GrantStore, accountId: number): Promise<void> {
  await watched.withGrantLock(accountId, async (tx) => {
    await tx.get();
    await tx.update({ status: 'needs_consent', lastError: 'invalid_grant: grant revoked' });
  });
}

/** Runs the real CLI (`src/cli.ts`) with the token on stdin; resolves with its exit code and output. */
function cli(configFile: string, args: string[], stdin: string) {
  return withDeadline(
    new Promise<{ code: number | null; out: string }>((resolve, reject) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', join(ROOT, 'src', 'cli.ts'), '--config', configFile, ...args],
        { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
      );
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.once('error', reject);
      child.once('close', (code) => resolve({ code, out }));
      child.stdin.end(stdin);
    }),
    60_000,
    `the CLI ${args.slice(0, 2).join(' ')}`,
  );
}

test('SQLite: a grant import from the CLI is announced once as recovered by the serving process', async (t) => {
  const rx = await receiver();
  const dir = mkdtempSync(join(tmpdir(), 'iop-announce-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const configFile = join(dir, 'config.yaml');
  const yaml = `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: imaps, address: 127.0.0.1, port: 0, tls: implicit }
providers:
  local: ${JSON.stringify({ ...opProviderConfig(op), upstream: { host: '127.0.0.1' } })}
notifications:
  retry_initial_seconds: 0.05
  webhooks:
    - { name: ops, url: ${JSON.stringify(rx.url)} }
`;
  writeFileSync(configFile, yaml);
  const { config } = parseConfig(yaml, configFile, {});
  // What `serve` opens: the same file the CLI writes to.
  const store = await openStore(
    config,
    Keyring.fromConfig(config.encryption, dir, silentLogger),
    silentLogger,
  );
  const metrics = createMetrics({ defaults: false });
  const notifier = new Notifier({
    store,
    config: config.notifications,
    publicUrl: 'https://proxy.example.test',
    metrics,
    watchMs: WATCH_MS,
  });
  t.after(async () => {
    await notifier.close();
    await store.close();
  });
  const account = await store.createAccount(
    { login: 'scanner', upstreamUser: 'scanner@example.com', provider: 'local' },
    'test',
  );
  const first = await op.mintGrant('scanner@example.com');
  await store.putGrant(
    account.id,
    {
      kind: 'refresh_token',
      status: 'active',
      refreshToken: first.refresh_token,
      accessToken: null,
      accessTokenExpiresAt: null,
      scope: null,
      lastRefreshAt: Date.now(),
      lastError: null,
    },
    'test',
  );
  await until(async () => (await store.grantNotice(account.id)) === 'active', 5000, 'the first look');

  // The serving process marks it needs_consent itself: announced at once, and only once.
  await markNeedsConsent(
    watchGrantChanges(store, (id, event, reason) => notifier.grantChanged(id, event, reason)),
    account.id,
  );
  await until(() => rx.got.length === 1, 5000, 'the needs_consent event');
  await stays(() => rx.got.length === 1, QUIET_MS, 'the watch does not announce it again');
  assert.equal(rx.got[0]?.event, 'grant.needs_consent');

  // The admin fixes it from the CLI, another process without a notifier.
  const fresh = await op.mintGrant('scanner@example.com');
  const r = await cli(configFile, ['grant', 'import', 'scanner'], `${fresh.refresh_token}\n`);
  assert.equal(r.code, 0, r.out);
  assert.equal((await store.getGrant(account.id))?.status, 'active');
  await until(() => rx.got.length === 2, 10_000, 'the recovery to be announced by the serving process');
  await stays(() => rx.got.length === 2, QUIET_MS, 'announced once');
  assert.equal(rx.got[1]?.event, 'grant.recovered');
  assert.equal(rx.got[1]?.mailbox, 'scanner@example.com');
  assert.equal(rx.got[1]?.reconnect_url, 'https://proxy.example.test/connect');
  for (const token of [first.refresh_token, fresh.refresh_token]) {
    assert.ok(!JSON.stringify(rx.got).includes(token), 'no token in an event');
  }
});

test('PostgreSQL: two instances and the CLI share the store; each change is announced exactly once', async (t) => {
  let pgServer: TestPostgres | undefined;
  t.after(async () => {
    await pgServer?.stop();
  });
  pgServer = await startPostgres();
  const url = await pgServer.database();
  const keyring = Keyring.random();
  const rx = await receiver();
  const config = configSchema.shape.notifications.parse({
    retry_initial_seconds: 0.05,
    webhooks: [{ name: 'ops', url: rx.url }],
  });
  const cliStore = await PostgresGrantStore.open(url, keyring);
  const instances = await Promise.all(
    ['a', 'b'].map(async () => {
      const store = await PostgresGrantStore.open(url, keyring);
      const metrics = createMetrics({ defaults: false });
      const notifier = new Notifier({ store, config, metrics, watchMs: WATCH_MS });
      return { store, metrics, notifier };
    }),
  );
  t.after(async () => {
    for (const i of instances) {
      await i.notifier.close();
      await i.store.close();
    }
    await cliStore.close();
  });
  const [a, b] = instances as [(typeof instances)[0], (typeof instances)[0]];
  const sent = async () => {
    let n = 0;
    for (const i of instances) {
      for (const v of (await i.metrics.notifications.get()).values)
        if (v.labels.result === 'sent') n += v.value;
    }
    return n;
  };

  const account = await cliStore.createAccount(
    { login: 'copier', upstreamUser: 'copier@example.com', provider: 'local' },
    'cli',
  );
  const grant = {
    kind: 'refresh_token' as const,
    status: 'active' as const,
    refreshToken: 'rt-not-used-here',
    accessToken: null,
    accessTokenExpiresAt: null,
    scope: null,
    lastRefreshAt: Date.now(),
    lastError: null,
  };
  await cliStore.putGrant(account.id, grant, 'cli');
  await until(async () => (await a.store.grantNotice(account.id)) === 'active', 5000, 'the first look');
  assert.equal(rx.got.length, 0, 'a grant seen for the first time is recorded, not announced');

  // Instance B's broker loses the grant: B announces it, A's watch does not again.
  await markNeedsConsent(
    watchGrantChanges(b.store, (id, event, reason) => b.notifier.grantChanged(id, event, reason)),
    account.id,
  );
  await until(() => rx.got.length === 1, 5000, 'the needs_consent event');
  await stays(() => rx.got.length === 1, QUIET_MS, 'one needs_consent for two instances');
  assert.equal(rx.got[0]?.event, 'grant.needs_consent');
  assert.match(String(rx.got[0]?.reason), /invalid_grant/);

  // The CLI re-imports; both watches and both instances' own claims race for the recovery.
  await cliStore.putGrant(account.id, grant, 'cli');
  a.notifier.grantChanged(account.id, 'grant.recovered', null);
  b.notifier.grantChanged(account.id, 'grant.recovered', null);
  await until(() => rx.got.length === 2, 5000, 'the recovery');
  await stays(() => rx.got.length === 2, QUIET_MS, 'one recovery for two instances');
  assert.equal(rx.got[1]?.event, 'grant.recovered');
  await until(async () => (await sent()) === 2, 5000, 'two deliveries counted');

  // Lost again, set by the CLI's side (no notifier there): the watches announce it once.
  await cliStore.putGrant(
    account.id,
    { ...grant, status: 'needs_consent', lastError: 'invalid_grant' },
    'cli',
  );
  await until(() => rx.got.length === 3, 5000, 'needs_consent found by a watch');
  await stays(() => rx.got.length === 3, QUIET_MS, 'announced once');
  assert.equal(rx.got[2]?.event, 'grant.needs_consent');
});
