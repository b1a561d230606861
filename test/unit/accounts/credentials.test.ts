import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LRUCache } from 'lru-cache';
import { StoreCredentialChecker, type VerifiedEntry } from '../../../src/accounts/credentials.js';
import { LoginLimiter } from '../../../src/accounts/limiter.js';
import { generateAppPassword, hashAppPassword } from '../../../src/accounts/passwords.js';
import { Keyring } from '../../../src/store/crypto.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { GrantStore } from '../../../src/store/types.js';

let store: SqliteGrantStore;
let accountId: number;
const password = generateAppPassword();

before(async () => {
  store = await SqliteGrantStore.open(':memory:', Keyring.random());
  const a = await store.createAccount(
    { login: 'Alice', upstreamUser: 'alice@example.com', provider: 'p' },
    'test',
  );
  accountId = a.id;
  await store.addAppPassword(a.id, 'laptop', await hashAppPassword(generateAppPassword()), 'test');
  await store.addAppPassword(a.id, 'scanner', await hashAppPassword(password), 'test');
});
after(() => store.close());

/** Counts full checks (each one lists the account's app passwords before running scrypt). */
function counting(s: GrantStore): { store: GrantStore; lists: () => number } {
  let n = 0;
  const wrapped = new Proxy(s, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv);
      if (prop === 'listAppPasswords') {
        return (id: number) => {
          n++;
          return target.listAppPasswords(id);
        };
      }
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { store: wrapped, lists: () => n };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

describe('StoreCredentialChecker', () => {
  test('right password (any case, no dashes) passes; wrong and unknown give one identical answer', async () => {
    const c = new StoreCredentialChecker({ store, cacheSeconds: 60 });
    const ok = await c.verify('ALICE', password.replace(/-/g, '').toUpperCase(), '192.0.2.1');
    assert.equal(ok.ok, true);
    assert.equal(ok.ok && ok.account.upstreamUser, 'alice@example.com');
    const wrong = await c.verify('alice', generateAppPassword(), '192.0.2.1');
    const unknown = await c.verify('mallory', password, '192.0.2.1');
    assert.deepEqual(wrong, { ok: false, reason: 'bad_credentials' });
    assert.deepEqual(unknown, wrong);
    const used = (await store.listAppPasswords(accountId)).find((p) => p.label === 'scanner')!;
    assert.ok(used.lastUsedAt !== null);
    assert.ok((await store.getAccount(accountId))!.lastLoginAt !== null);
  });

  test('unknown user and wrong password take about the same time (loose median check)', async () => {
    const c = new StoreCredentialChecker({ store, cacheSeconds: 60 });
    await c.verify('nobody', 'x', '192.0.2.2'); // warm the dummy hash
    const wrong: number[] = [];
    const unknown: number[] = [];
    for (let i = 0; i < 7; i++) {
      let t = performance.now();
      await c.verify('alice', 'wrong-password', '192.0.2.2');
      wrong.push(performance.now() - t);
      t = performance.now();
      await c.verify(`ghost${i}`, 'wrong-password', '192.0.2.2');
      unknown.push(performance.now() - t);
    }
    const ratio = median(wrong) / median(unknown);
    // Without the dummy scrypt the unknown path would be ~100x faster; allow wide noise.
    assert.ok(ratio > 0.33 && ratio < 3, `wrong ${median(wrong)} ms vs unknown ${median(unknown)} ms`);
  });

  test('ten logins pay scrypt once; the cache key is an HMAC, not the password', async () => {
    const cache = new LRUCache<string, VerifiedEntry>({ max: 100, ttl: 60_000 });
    const { store: s, lists } = counting(store);
    const c = new StoreCredentialChecker({ store: s, cacheSeconds: 60, cache });
    const results = await Promise.all(
      Array.from({ length: 10 }, () => c.verify('alice', password, '192.0.2.3')),
    );
    assert.ok(results.every((r) => r.ok));
    assert.equal(lists(), 1, 'ten concurrent first logins share one full check');
    for (let i = 0; i < 10; i++) assert.equal((await c.verify('Alice', password, '192.0.2.3')).ok, true);
    assert.equal(lists(), 1, 'cached logins must not run scrypt again');
    const keys = [...cache.keys()];
    assert.equal(keys.length, 1);
    assert.equal(keys[0], c.cacheKey('alice', password));
    const dump = JSON.stringify([...cache.entries()]);
    assert.ok(!dump.includes(password) && !dump.includes(password.replace(/-/g, '')));
    assert.ok(!dump.toLowerCase().includes('alice'));
  });

  test('a cached login notices a revoked password and a disabled account at once', async () => {
    const other = generateAppPassword();
    const a = await store.createAccount(
      { login: 'bob', upstreamUser: 'bob@example.com', provider: 'p' },
      'test',
    );
    await store.addAppPassword(a.id, 'phone', await hashAppPassword(other), 'test');
    const c = new StoreCredentialChecker({ store, cacheSeconds: 600 });
    assert.equal((await c.verify('bob', other, '192.0.2.4')).ok, true);

    await store.setAccountStatus(a.id, 'disabled', 'test');
    assert.deepEqual(await c.verify('bob', other, '192.0.2.4'), { ok: false, reason: 'account_disabled' });
    assert.deepEqual(await c.verify('bob', 'wrong', '192.0.2.4'), { ok: false, reason: 'bad_credentials' });
    await store.setAccountStatus(a.id, 'active', 'test');
    assert.equal((await c.verify('bob', other, '192.0.2.4')).ok, true);

    assert.equal(await store.revokeAppPassword(a.id, 'phone', 'test'), true);
    assert.deepEqual(await c.verify('bob', other, '192.0.2.4'), { ok: false, reason: 'bad_credentials' });
  });

  test("an attacker's address is slowed then refused while the real user logs in from theirs", async () => {
    const limiter = new LoginLimiter({
      free_failures: 2,
      max_failures: 5,
      window_seconds: 900,
      max_delay_ms: 40,
      max_entries: 1000,
    });
    const c = new StoreCredentialChecker({ store, cacheSeconds: 60, limiter });
    const attacker = '203.0.113.66';
    const replies: string[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await c.verify('alice', `guess-${i}`, attacker);
      replies.push(r.ok ? 'ok' : r.reason);
    }
    assert.deepEqual(replies, [
      'bad_credentials',
      'bad_credentials',
      'bad_credentials',
      'bad_credentials',
      'bad_credentials',
      'limited',
      'limited',
    ]);
    // Refused without checking the password: even the right one is refused from that address.
    assert.deepEqual(await c.verify('alice', password, attacker), { ok: false, reason: 'limited' });
    const real = await c.verify('alice', password, '198.51.100.10');
    assert.equal(real.ok, true);
  });

  test('password spraying in parallel from one address: checks take turns, so the work stays capped', async () => {
    const limiter = new LoginLimiter({
      free_failures: 3,
      max_failures: 5,
      window_seconds: 900,
      max_delay_ms: 0,
      max_entries: 1000,
    });
    const counted = counting(store);
    const c = new StoreCredentialChecker({ store: counted.store, cacheSeconds: 60, limiter });
    const sprayer = '203.0.113.99';
    // 100 wrong passwords at once over 50 user names: without in-flight counting all 100 get a scrypt check.
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) => c.verify(i % 2 ? `nobody${i}` : 'alice', `spray-${i}`, sprayer)),
    );
    const checked = results.filter((r) => !r.ok && r.reason === 'bad_credentials').length;
    const refused = results.filter((r) => !r.ok && r.reason === 'limited').length;
    assert.equal(checked + refused, 100);
    // Four checks per address at a time, the limiter asked again at each turn: the threshold plus one turn.
    assert.ok(
      checked <= 15 + 4,
      `at most the address threshold (15) and one turn were checked, got ${checked}`,
    );
    assert.ok(counted.lists() <= 15 + 4, 'no more password lists read than checks allowed');
    assert.equal(
      limiter.addressLocked(sprayer),
      true,
      'the address is locked: its connections close at accept',
    );
    assert.equal(limiter.addressLocked('198.51.100.10'), false);
    assert.equal(
      (await c.verify('alice', password, '198.51.100.10')).ok,
      true,
      'the real user still logs in',
    );
  });

  test('a burst of real first logins from one address (NAT, a load balancer) waits its turn and is never refused', async () => {
    const limiter = new LoginLimiter({
      free_failures: 3,
      max_failures: 5,
      window_seconds: 900,
      max_delay_ms: 0,
      max_entries: 1000,
    });
    const c = new StoreCredentialChecker({ store, cacheSeconds: 60, limiter });
    // 20 different users, each with the right password, all at once from one address, cold cache.
    const users = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const pw = generateAppPassword();
        const a = await store.createAccount(
          { login: `burst${i}`, upstreamUser: `burst${i}@example.com`, provider: 'p' },
          'test',
        );
        await store.addAppPassword(a.id, 'pc', await hashAppPassword(pw), 'test');
        return { login: `burst${i}`, pw };
      }),
    );
    const results = await Promise.all(users.map((u) => c.verify(u.login, u.pw, '198.51.100.77')));
    assert.deepEqual(
      results.filter((r) => !r.ok),
      [],
      'every right password is accepted',
    );
  });
});
