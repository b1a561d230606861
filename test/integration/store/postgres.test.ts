import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { after, before, describe, type TestContext, test } from 'node:test';
import pg from 'pg';
import { createLogger, type Logger } from '../../../src/log.js';
import { Keyring } from '../../../src/store/crypto.js';
import { MIGRATIONS } from '../../../src/store/migrations.js';
import { PostgresGrantStore } from '../../../src/store/postgres.js';
import { startPostgres, type TestPostgres } from '../../helpers/postgres.js';
import { grant, grantStoreContract } from '../../helpers/store-contract.js';

let server: TestPostgres;
before(async () => {
  server = await startPostgres();
});
after(async () => {
  await server?.stop();
});

async function sql(url: string, text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await c.query(text, params);
  } finally {
    await c.end();
  }
}

function captureLog(): { log: Logger; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return {
    log: createLogger({ level: 'info', format: 'json', destination: sink }),
    text: () => chunks.join(''),
  };
}

/** Two store instances ("two proxies": two pools) on one fresh database, with one account and grant. */
async function twoInstances(t: TestContext, g: ReturnType<typeof grant>) {
  const url = await server.database();
  const k = Keyring.random();
  const proxyA = await PostgresGrantStore.open(url, k);
  const proxyB = await PostgresGrantStore.open(url, k);
  t.after(async () => {
    await proxyA.close();
    await proxyB.close();
  });
  const a = await proxyA.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
  await proxyA.putGrant(a.id, g, 'cli');
  return { url, proxyA, proxyB, a };
}

const dbName = (url: string) => new URL(url).pathname.slice(1);

describe('PostgresGrantStore', () => {
  grantStoreContract({
    async fresh(keyring) {
      const url = await server.database();
      return {
        store: await PostgresGrantStore.open(url, keyring),
        reopen: (k) => PostgresGrantStore.open(url, k),
        async copyRefreshTokenCipher(from, to) {
          await sql(
            url,
            'UPDATE grants SET refresh_token_enc = (SELECT refresh_token_enc FROM grants WHERE account_id = $1) WHERE account_id = $2',
            [from, to],
          );
        },
      };
    },
  });

  test('the database (pg_dump and raw columns) holds no plaintext token', async (t) => {
    const url = await server.database();
    const s = await PostgresGrantStore.open(url, Keyring.random());
    t.after(() => s.close());
    const a = await s.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    const rt = `RT-${randomBytes(12).toString('hex')}`;
    const at = `AT-${randomBytes(12).toString('hex')}`;
    await s.putGrant(a.id, grant({ refreshToken: rt, accessToken: at }), 'cli');
    await s.withGrantLock(a.id, (tx) => tx.update({ accessToken: `${at}-2` }));

    const raw = (await sql(url, 'SELECT refresh_token_enc, access_token_enc FROM grants')).rows[0] as Record<
      string,
      string
    >;
    assert.match(raw.refresh_token_enc!, /^v1\./, 'stored in the keyring format');
    const dump = await server.tool('pg_dump', ['-d', dbName(url)]);
    assert.ok(dump.includes(raw.refresh_token_enc!), 'the dump contains the grants table');
    for (const secret of [rt, at, `${at}-2`]) {
      assert.equal(dump.includes(secret), false, 'plaintext token found in pg_dump');
      assert.equal(JSON.stringify(raw).includes(secret), false, 'plaintext token found in a column');
    }
    assert.equal((await s.getGrant(a.id))!.accessToken, `${at}-2`);
  });

  test('two instances refreshing one grant concurrently: exactly one refresh, all see its token', async (t) => {
    const { proxyA, proxyB, a } = await twoInstances(
      t,
      grant({ accessToken: 'expired', accessTokenExpiresAt: 1 }),
    );
    let refreshes = 0;
    // What the broker does inside the lock: re-read, use a fresh token if one is there, else refresh.
    const refresh = (store: PostgresGrantStore) =>
      store.withGrantLock(a.id, async (tx) => {
        const g = (await tx.get())!;
        if (g.accessTokenExpiresAt! > Date.now()) return g.accessToken;
        refreshes++;
        // Stand-in for the token endpoint round trip: the other instance queues on the row lock meanwhile.
        await new Promise((r) => setTimeout(r, 50));
        await tx.update({
          accessToken: 'fresh',
          refreshToken: 'rt-rotated',
          accessTokenExpiresAt: Date.now() + 3_600_000,
        });
        return 'fresh';
      });
    const got = await Promise.all(
      Array.from({ length: 16 }, (_, i) => refresh(i % 2 === 0 ? proxyA : proxyB)),
    );
    assert.equal(refreshes, 1);
    assert.deepEqual(new Set(got), new Set(['fresh']));
    assert.equal((await proxyB.getGrant(a.id))!.refreshToken, 'rt-rotated');
  });

  test('a holder whose connection dies frees the grant lock for the other instance', async (t) => {
    const { url, proxyA, proxyB, a } = await twoInstances(t, grant());
    let entered!: () => void;
    const inLock = new Promise<void>((r) => {
      entered = r;
    });
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const holder = proxyA.withGrantLock(a.id, async (tx) => {
      entered();
      await gate;
      await tx.update({ accessToken: 'never-committed' });
    });
    await inLock;
    // A crashed instance: the server ends its session (as it would when the host vanishes).
    await sql(
      url,
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE datname = current_database() AND state = 'idle in transaction' AND pid <> pg_backend_pid()`,
    );
    const seen = await proxyB.withGrantLock(a.id, async (tx) => (await tx.get())!.accessToken);
    assert.equal(seen, null);
    release();
    await assert.rejects(holder);
    assert.equal((await proxyB.getGrant(a.id))!.accessToken, null);
  });

  test('several instances migrating at once: applied once, every instance starts', async () => {
    const url = await server.database();
    const k = Keyring.random();
    const cap = captureLog();
    const stores = await Promise.all(
      Array.from({ length: 4 }, () => PostgresGrantStore.open(url, k, cap.log)),
    );
    try {
      const rows = (await sql(url, 'SELECT version FROM schema_migrations')).rows;
      assert.deepEqual(
        rows,
        MIGRATIONS.map((m) => ({ version: m.version })),
      );
      const applied = cap
        .text()
        .split('\n')
        .filter((l) => l.includes('store migration applied'));
      assert.equal(applied.length, MIGRATIONS.length, 'each migration applied by one instance');
      await Promise.all(stores.map((s) => s.ping()));
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  test('the URL is a secret: logs and errors name host and database only', async (t) => {
    const url = await server.database();
    const cap = captureLog();
    const s = await PostgresGrantStore.open(url, Keyring.random(), cap.log);
    t.after(() => s.close());
    await s.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
    assert.match(cap.text(), new RegExp(`127\\.0\\.0\\.1:${server.port}/${dbName(url)}`));
    assert.equal(cap.text().includes(server.password), false);

    const wrong = `wrong-${randomBytes(8).toString('hex')}`;
    const bad = new URL(url);
    bad.password = wrong;
    await assert.rejects(PostgresGrantStore.open(bad.toString(), Keyring.random(), cap.log), (err: Error) => {
      assert.match(
        err.message,
        /cannot open PostgreSQL store 127\.0\.0\.1:\d+\/\w+: .*password authentication failed/,
      );
      assert.equal(err.message.includes(wrong), false);
      return true;
    });
    assert.equal(cap.text().includes(wrong), false);
  });
});
