import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { Keyring } from '../../src/store/crypto.js';
import { rotateKeys } from '../../src/store/index.js';
import type { GrantRecord, GrantStore } from '../../src/store/types.js';

/**
 * The behaviour every GrantStore implementation shares (SQLite, PostgreSQL): one function
 * that registers the same tests for each, so the two backends cannot drift apart.
 */

export type ContractStore = GrantStore;

export interface StoreDatabase {
  store: ContractStore;
  /** Another store instance (another process's view) on the same database. */
  reopen(keyring: Keyring): Promise<ContractStore>;
  /** Raw SQL: copy one grant's encrypted refresh token into another grant's row. */
  copyRefreshTokenCipher(fromAccountId: number, toAccountId: number): Promise<void>;
}

export interface StoreHarness {
  /** A store on a fresh, empty database; the harness closes nothing, the tests do. */
  fresh(keyring: Keyring): Promise<StoreDatabase>;
}

export const grant = (o: Partial<GrantRecord> = {}): Omit<GrantRecord, 'accountId' | 'updatedAt'> => ({
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

export function grantStoreContract(h: StoreHarness): void {
  test('accounts, aliases, app passwords and grants round-trip; audit records changes', async (t) => {
    const { store: s } = await h.fresh(Keyring.random());
    t.after(() => s.close());
    const a = await s.createAccount(
      { login: 'Scanner', upstreamUser: 'scan@example.com', provider: 'm365' },
      'cli',
    );
    assert.deepEqual(a.logins, ['scanner']);
    await s.addLogin(a.id, 'SCAN2', 'cli');
    assert.equal((await s.getAccountByLogin('scan2'))?.id, a.id);
    assert.equal((await s.getAccountByLogin(' SCANNER '))?.upstreamUser, 'scan@example.com');
    assert.deepEqual(
      (await s.listAccounts()).map((x) => x.logins),
      [['scanner', 'scan2']],
    );
    await assert.rejects(s.addLogin(a.id, 'scanner', 'cli'), /already in use/);
    await assert.rejects(
      s.createAccount({ login: 'scan2', upstreamUser: 'x@example.com', provider: 'm365' }, 'cli'),
      /already in use/,
    );
    assert.equal((await s.listAccounts()).length, 1, 'a refused account leaves no row behind');

    const v0 = (await s.getAccount(a.id))!.credentialVersion!;
    const p = await s.addAppPassword(a.id, 'printer', 'scrypt$hash', 'cli');
    await assert.rejects(s.addAppPassword(a.id, 'printer', 'h2', 'cli'), /already exists/);
    assert.ok((await s.getAccount(a.id))!.credentialVersion! > v0);
    await s.touchAppPassword(p.id, 123);
    assert.equal((await s.listAppPasswords(a.id))[0]!.lastUsedAt, 123);
    assert.equal(await s.revokeAppPassword(a.id, String(p.id), 'cli'), true);
    assert.equal(await s.revokeAppPassword(a.id, 'printer', 'cli'), false);

    await s.putGrant(a.id, grant({ accessToken: 'at-1', accessTokenExpiresAt: 1_800_000_000_000 }), 'cli');
    const g = (await s.getGrant(a.id))!;
    assert.equal(g.refreshToken, 'rt-initial');
    assert.equal(g.accessToken, 'at-1');
    assert.equal(g.accessTokenExpiresAt, 1_800_000_000_000);
    assert.deepEqual(await s.countGrantsByStatus(), { active: 1, needs_consent: 0, error: 0 });

    await s.recordLogin(a.id, 456);
    assert.equal((await s.getAccount(a.id))!.lastLoginAt, 456);
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
    await assert.rejects(s.setAccountStatus(a.id, 'active', 'cli'), /no account/);
  });

  test('accountStates reads account and grant status of many accounts at once; removed ones are absent', async (t) => {
    const { store: s } = await h.fresh(Keyring.random());
    t.after(() => s.close());
    const mk = (login: string) =>
      s.createAccount({ login, upstreamUser: `${login}@example.com`, provider: 'm365' }, 'cli');
    const [a, b, c, d] = [await mk('a'), await mk('b'), await mk('c'), await mk('d')];
    await s.putGrant(a.id, grant(), 'cli');
    await s.putGrant(b.id, grant({ status: 'needs_consent' }), 'cli');
    await s.setAccountStatus(c.id, 'disabled', 'cli');
    await s.deleteAccount(d.id, 'cli');
    const states = await s.accountStates([a.id, b.id, c.id, d.id]);
    assert.deepEqual(
      [...states.entries()].sort((x, y) => x[0] - y[0]),
      [
        [a.id, { accountStatus: 'active', grantStatus: 'active' }],
        [b.id, { accountStatus: 'active', grantStatus: 'needs_consent' }],
        [c.id, { accountStatus: 'disabled', grantStatus: null }],
      ],
    );
    assert.equal((await s.accountStates([])).size, 0);
  });

  test('announced grant status: compare-and-set, one winner across instances; grants not yet announced are listed', async (t) => {
    const { store: s, reopen } = await h.fresh(Keyring.random());
    const other = await reopen(Keyring.random());
    t.after(async () => {
      await other.close();
      await s.close();
    });
    const a = await s.createAccount(
      { login: 'scanner', upstreamUser: 'scan@example.com', provider: 'm365' },
      'cli',
    );
    const b = await s.createAccount(
      { login: 'copier', upstreamUser: 'copy@example.com', provider: 'm365' },
      'cli',
    );
    assert.deepEqual(await s.unannouncedGrants(), [], 'no grant, nothing to announce');
    await s.putGrant(a.id, grant(), 'cli');
    await s.putGrant(b.id, grant({ status: 'needs_consent', lastError: 'invalid_grant' }), 'cli');
    const listed = (await other.unannouncedGrants()).sort((x, y) => x.accountId - y.accountId);
    assert.deepEqual(listed, [
      { accountId: a.id, status: 'active', announced: null, lastError: null },
      { accountId: b.id, status: 'needs_consent', announced: null, lastError: 'invalid_grant' },
    ]);
    assert.equal(await s.grantNotice(a.id), null);
    // Two instances claim the same first record at once: exactly one wins.
    const first = await Promise.all([
      s.claimGrantNotice(a.id, null, 'active'),
      other.claimGrantNotice(a.id, null, 'active'),
    ]);
    assert.deepEqual(first.sort(), [false, true]);
    assert.equal(await other.grantNotice(a.id), 'active');
    assert.deepEqual(
      (await s.unannouncedGrants()).map((g) => g.accountId),
      [b.id],
    );
    // A change: the claim from the recorded status wins once; a stale `from` loses.
    await s.putGrant(a.id, grant({ status: 'needs_consent' }), 'cli');
    assert.deepEqual(await s.unannouncedGrants().then((l) => l.find((g) => g.accountId === a.id)), {
      accountId: a.id,
      status: 'needs_consent',
      announced: 'active',
      lastError: null,
    });
    const second = await Promise.all([
      s.claimGrantNotice(a.id, 'active', 'needs_consent'),
      other.claimGrantNotice(a.id, 'active', 'needs_consent'),
    ]);
    assert.deepEqual(second.sort(), [false, true]);
    assert.equal(await s.claimGrantNotice(a.id, 'active', 'error'), false, 'stale: the record moved on');
    assert.equal(await s.grantNotice(a.id), 'needs_consent');
    // A removed account's record goes with it, and a claim for it changes nothing.
    await s.deleteAccount(a.id, 'cli');
    assert.equal(await s.grantNotice(a.id), null);
    assert.equal(await s.claimGrantNotice(a.id, null, 'active'), false);
  });

  test('migrate is idempotent and another instance on the same database sees the data', async (t) => {
    const k = Keyring.random();
    const db = await h.fresh(k);
    t.after(() => db.store.close());
    await db.store.createAccount({ login: 'u', upstreamUser: 'u@example.com', provider: 'p' }, 'cli');
    await db.store.migrate();
    const s2 = await db.reopen(k);
    t.after(() => s2.close());
    await s2.migrate();
    assert.deepEqual(
      (await s2.listAccounts()).map((a) => a.logins[0]),
      ['u'],
    );
    await s2.ping();
  });

  test('withGrantLock: serializes holders, waiter sees the fresh value, throw rolls back', async (t) => {
    const { store: s } = await h.fresh(Keyring.random());
    t.after(() => s.close());
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
    assert.ok(got.every((tok) => tok === 'at-new'));
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

  test('a second store instance waits for the grant lock held by another', async (t) => {
    const k = Keyring.random();
    const db = await h.fresh(k);
    const s1 = db.store;
    const s2 = await db.reopen(k);
    t.after(async () => {
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

  test('a value from a different row cannot be decrypted (associated data)', async (t) => {
    const db = await h.fresh(Keyring.random());
    const s = db.store;
    t.after(() => s.close());
    const a = await s.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    const b = await s.createAccount({ login: 'b', upstreamUser: 'b@example.com', provider: 'p' }, 'cli');
    await s.putGrant(a.id, grant({ refreshToken: 'rt-a' }), 'cli');
    await s.putGrant(b.id, grant({ refreshToken: 'rt-b' }), 'cli');
    await db.copyRefreshTokenCipher(a.id, b.id);
    await assert.rejects(s.getGrant(b.id), /wrong key, tampered or moved/);
  });

  test('rotateKeys re-encrypts every value under the new key in one go', async (t) => {
    const oldKey = { id: 'old', key: randomBytes(32) };
    const db = await h.fresh(new Keyring([oldKey]));
    const a = await db.store.createAccount(
      { login: 'a', upstreamUser: 'a@example.com', provider: 'p' },
      'cli',
    );
    await db.store.putGrant(a.id, grant({ refreshToken: 'rt-a', accessToken: 'at-a' }), 'cli');
    await db.store.close();
    const newKey = { id: 'new', key: randomBytes(32) };
    const s2 = await db.reopen(new Keyring([newKey, oldKey]));
    assert.deepEqual(await rotateKeys(s2), { total: 2, rotated: 2 });
    assert.deepEqual(await rotateKeys(s2), { total: 2, rotated: 0 });
    await s2.close();
    const s3 = await db.reopen(new Keyring([newKey]));
    t.after(() => s3.close());
    const g = (await s3.getGrant(a.id))!;
    assert.equal(g.refreshToken, 'rt-a');
    assert.equal(g.accessToken, 'at-a');
    assert.equal((await s3.listAudit()).at(0)?.action, 'key.rotate');
  });
}
