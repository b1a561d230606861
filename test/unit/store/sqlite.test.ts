import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { Keyring } from '../../../src/store/crypto.js';
import { rotateKeys } from '../../../src/store/index.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { GrantRecord } from '../../../src/store/types.js';

const dir = mkdtempSync(join(tmpdir(), 'iop-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const dbPath = () => join(dir, `s${n++}.db`);

const grant = (o: Partial<GrantRecord> = {}): Omit<GrantRecord, 'accountId' | 'updatedAt'> => ({
  kind: 'refresh_token',
  status: 'active',
  refreshToken: 'rt-initial',
  accessToken: null,
  accessTokenExpiresAt: null,
  scope: 'offline_access',
  lastRefreshAt: null,
  lastError: null,
  ...o,
});

describe('SqliteGrantStore', () => {
  test('accounts, aliases, app passwords and grants round-trip; audit records changes', async () => {
    const s = await SqliteGrantStore.open(dbPath(), Keyring.random());
    after(() => s.close());
    const a = await s.createAccount(
      { login: 'Scanner', upstreamUser: 'scan@example.com', provider: 'm365' },
      'cli',
    );
    assert.deepEqual(a.logins, ['scanner']);
    await s.addLogin(a.id, 'SCAN2', 'cli');
    assert.equal((await s.getAccountByLogin('scan2'))?.id, a.id);
    assert.equal((await s.getAccountByLogin(' SCANNER '))?.upstreamUser, 'scan@example.com');
    await assert.rejects(s.addLogin(a.id, 'scanner', 'cli'), /already in use/);
    await assert.rejects(
      s.createAccount({ login: 'scan2', upstreamUser: 'x@example.com', provider: 'm365' }, 'cli'),
      /already in use/,
    );

    const v0 = (await s.getAccount(a.id))!.credentialVersion!;
    const p = await s.addAppPassword(a.id, 'printer', 'scrypt$hash', 'cli');
    await assert.rejects(s.addAppPassword(a.id, 'printer', 'h2', 'cli'), /already exists/);
    assert.ok((await s.getAccount(a.id))!.credentialVersion! > v0);
    await s.touchAppPassword(p.id, 123);
    assert.equal((await s.listAppPasswords(a.id))[0]!.lastUsedAt, 123);
    assert.equal(await s.revokeAppPassword(a.id, String(p.id), 'cli'), true);
    assert.equal(await s.revokeAppPassword(a.id, 'printer', 'cli'), false);

    await s.putGrant(a.id, grant({ accessToken: 'at-1', accessTokenExpiresAt: 99 }), 'cli');
    const g = (await s.getGrant(a.id))!;
    assert.equal(g.refreshToken, 'rt-initial');
    assert.equal(g.accessToken, 'at-1');
    assert.equal(g.accessTokenExpiresAt, 99);
    assert.deepEqual(await s.countGrantsByStatus(), { active: 1, needs_consent: 0, error: 0 });

    await s.setAccountStatus(a.id, 'disabled', 'cli');
    assert.equal((await s.getAccount(a.id))!.status, 'disabled');
    const actions = (await s.listAudit(a.id)).map((e) => e.action).reverse();
    assert.deepEqual(actions, [
      'account.create',
      'account.alias_add',
      'password.add',
      'password.revoke',
      'grant.put',
      'account.disable',
    ]);
    await s.deleteAccount(a.id, 'cli');
    assert.equal(await s.getAccountByLogin('scanner'), null);
    assert.equal(await s.getGrant(a.id), null);
  });

  test('migrations are recorded once and reopening is idempotent; file is 0600', async () => {
    const path = dbPath();
    const k = Keyring.random();
    const s1 = await SqliteGrantStore.open(path, k);
    await s1.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
    await s1.migrate();
    await s1.close();
    const s2 = await SqliteGrantStore.open(path, k);
    assert.equal((await s2.listAccounts()).length, 1);
    await s2.close();
    const db = new Database(path, { readonly: true });
    const rows = db.prepare('SELECT version FROM schema_migrations').all();
    db.close();
    assert.deepEqual(rows, [{ version: 1 }]);
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });

  test('withGrantLock: serializes holders, waiter sees the fresh value, throw rolls back', async () => {
    const s = await SqliteGrantStore.open(dbPath(), Keyring.random());
    after(() => s.close());
    const a = await s.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
    await s.putGrant(a.id, grant(), 'cli');
    let refreshes = 0;
    const refresh = () =>
      s.withGrantLock(a.id, async (tx) => {
        const g = (await tx.get())!;
        if (g.accessToken) return g.accessToken;
        refreshes++;
        await new Promise((r) => setImmediate(r));
        await tx.update({ accessToken: 'at-new', refreshToken: 'rt-rotated', accessTokenExpiresAt: 5 });
        assert.equal((await tx.get())!.accessToken, 'at-new');
        return 'at-new';
      });
    const got = await Promise.all(Array.from({ length: 20 }, refresh));
    assert.equal(refreshes, 1);
    assert.ok(got.every((t) => t === 'at-new'));
    assert.equal((await s.getGrant(a.id))!.refreshToken, 'rt-rotated');

    await assert.rejects(
      s.withGrantLock(a.id, async (tx) => {
        await tx.update({ status: 'needs_consent' });
        throw new Error('boom');
      }),
      /boom/,
    );
    assert.equal((await s.getGrant(a.id))!.status, 'active');
  });

  test('a second process-level store waits for the lease held by another', async () => {
    const path = dbPath();
    const k = Keyring.random();
    const s1 = await SqliteGrantStore.open(path, k);
    const s2 = await SqliteGrantStore.open(path, k);
    after(async () => {
      await s1.close();
      await s2.close();
    });
    const a = await s1.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
    await s1.putGrant(a.id, grant(), 'cli');
    const order: string[] = [];
    let releaseFirst!: () => void;
    const gate = new Promise<void>((r) => {
      releaseFirst = r;
    });
    let entered!: () => void;
    const firstIn = new Promise<void>((r) => {
      entered = r;
    });
    const first = s1.withGrantLock(a.id, async (tx) => {
      entered();
      await gate;
      await tx.update({ accessToken: 'from-s1' });
      order.push('s1');
    });
    await firstIn;
    const second = s2.withGrantLock(a.id, async (tx) => {
      order.push(`s2 saw ${(await tx.get())!.accessToken}`);
    });
    releaseFirst();
    await Promise.all([first, second]);
    assert.deepEqual(order, ['s1', 's2 saw from-s1']);
  });

  test('a value from a different row cannot be decrypted (associated data)', async () => {
    const path = dbPath();
    const s = await SqliteGrantStore.open(path, Keyring.random());
    after(() => s.close());
    const a = await s.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    const b = await s.createAccount({ login: 'b', upstreamUser: 'b@example.com', provider: 'p' }, 'cli');
    await s.putGrant(a.id, grant({ refreshToken: 'rt-a' }), 'cli');
    await s.putGrant(b.id, grant({ refreshToken: 'rt-b' }), 'cli');
    const db = new Database(path);
    db.prepare(
      'UPDATE grants SET refresh_token_enc = (SELECT refresh_token_enc FROM grants WHERE account_id = ?) WHERE account_id = ?',
    ).run(a.id, b.id);
    db.close();
    await assert.rejects(s.getGrant(b.id), /wrong key, tampered or moved/);
  });

  test('rotateKeys re-encrypts every value under the new key in one go', async () => {
    const path = dbPath();
    const oldKey = { id: 'old', key: randomBytes(32) };
    const s1 = await SqliteGrantStore.open(path, new Keyring([oldKey]));
    const a = await s1.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    await s1.putGrant(a.id, grant({ refreshToken: 'rt-a', accessToken: 'at-a' }), 'cli');
    await s1.close();
    const newKey = { id: 'new', key: randomBytes(32) };
    const s2 = await SqliteGrantStore.open(path, new Keyring([newKey, oldKey]));
    assert.deepEqual(await rotateKeys(s2), { total: 2, rotated: 2 });
    assert.deepEqual(await rotateKeys(s2), { total: 2, rotated: 0 });
    await s2.close();
    const s3 = await SqliteGrantStore.open(path, new Keyring([newKey]));
    after(() => s3.close());
    const g = (await s3.getGrant(a.id))!;
    assert.equal(g.refreshToken, 'rt-a');
    assert.equal(g.accessToken, 'at-a');
  });

  test('the database file and WAL hold no plaintext token', async () => {
    const sub = mkdtempSync(join(dir, 'scan-'));
    const s = await SqliteGrantStore.open(join(sub, 'p.db'), Keyring.random());
    const a = await s.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    const rt = `RT-${randomBytes(12).toString('hex')}`;
    const at = `AT-${randomBytes(12).toString('hex')}`;
    await s.putGrant(a.id, grant({ refreshToken: rt, accessToken: at }), 'cli');
    // Scan while open (WAL populated) and after close (checkpointed into the main file).
    const scan = () => {
      for (const f of readdirSync(sub)) {
        const bytes = readFileSync(join(sub, f));
        assert.equal(bytes.includes(rt), false, `refresh token found in ${f}`);
        assert.equal(bytes.includes(at), false, `access token found in ${f}`);
      }
    };
    assert.ok(readdirSync(sub).some((f) => f.endsWith('-wal')));
    scan();
    await s.close();
    scan();
  });
});
