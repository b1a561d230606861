import assert from 'node:assert/strict';
import { test } from 'node:test';
import { recheckSessions, watchConsentLoss, withdrawal } from '../../../src/core/revocation.js';
import { SessionRegistry } from '../../../src/core/sessions.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics } from '../../../src/metrics.js';
import type { AccountState } from '../../../src/store/types.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

const grant = {
  kind: 'refresh_token' as const,
  status: 'active' as const,
  refreshToken: 'rt',
  accessToken: null,
  accessTokenExpiresAt: null,
  scope: null,
  lastRefreshAt: null,
  lastError: null,
};

/** A registry with one spliced session per given account; `ended` lists the accounts whose session was ended. */
function live(ids: number[], metrics = createMetrics({ defaults: false })) {
  const reg = new SessionRegistry({ metrics });
  const ended: number[] = [];
  const releases = new Map<number, () => void>();
  for (const id of ids) {
    const slot = reg.tryAcquire(id, 10)!;
    slot.attach({ account: `acct${id}`, protocol: 'imap', log: silentLogger, end: () => ended.push(id) });
    releases.set(id, () => slot.release());
  }
  return { reg, ended, releases, metrics };
}

test('withdrawal: disabled, removed, no grant and needs_consent end sessions; a failing refresh does not', () => {
  const st = (a: AccountState['accountStatus'], g: AccountState['grantStatus']) => ({
    accountStatus: a,
    grantStatus: g,
  });
  assert.equal(withdrawal(undefined), 'account_removed');
  assert.equal(withdrawal(st('disabled', 'active')), 'account_disabled');
  assert.equal(withdrawal(st('active', null)), 'no_grant');
  assert.equal(withdrawal(st('active', 'needs_consent')), 'needs_consent');
  assert.equal(withdrawal(st('active', 'error')), null);
  assert.equal(withdrawal(st('active', 'active')), null);
});

test('registry: the cap counts sessions still logging in; end() reaches only spliced ones, once, and counts them', async () => {
  const metrics = createMetrics({ defaults: false });
  const reg = new SessionRegistry({ metrics });
  const a = reg.tryAcquire(1, 2)!;
  const b = reg.tryAcquire(1, 2)!;
  assert.equal(reg.tryAcquire(1, 2), null, 'cap reached');
  assert.deepEqual(reg.accountIds(), [], 'nothing spliced yet: nothing to recheck');
  let ends = 0;
  a.attach({ account: 'alice', protocol: 'imap', log: silentLogger, end: () => ends++ });
  assert.deepEqual(reg.accountIds(), [1]);
  assert.equal(reg.end(1, 'account_disabled'), 1, 'the one still logging in is left to its login checks');
  assert.equal(reg.end(1, 'account_disabled'), 0, 'an ended session is not ended twice');
  assert.equal(ends, 1);
  const v = (await metrics.sessionsTerminated.get()).values;
  assert.deepEqual(
    v.map((x) => [x.labels.reason, x.value]),
    [['account_disabled', 1]],
  );
  // The slot goes when the splice releases it (both sockets closed), not at end().
  assert.equal(reg.count(1), 2);
  a.release();
  b.release();
  assert.equal(reg.count(1), 0);
  b.attach({ account: 'alice', protocol: 'imap', log: silentLogger, end: () => ends++ });
  assert.deepEqual(reg.accountIds(), [], 'attach after release is ignored');
});

/** Counts every read recheckSessions may make: the batched one and the per-account ones. */
function countReads(store: Awaited<ReturnType<typeof memoryDbStore>>) {
  const asked: number[][] = [];
  const single = { n: 0 };
  const batched = store.accountStates.bind(store);
  const getAccount = store.getAccount.bind(store);
  const getGrant = store.getGrant.bind(store);
  store.accountStates = async (ids) => {
    asked.push([...ids]);
    return batched(ids);
  };
  store.getAccount = async (id) => {
    single.n++;
    return getAccount(id);
  };
  store.getGrant = async (id) => {
    single.n++;
    return getGrant(id);
  };
  return { asked, single };
}

test('recheck: no sessions, no store read', async (t) => {
  const store = await memoryDbStore();
  t.after(() => store.close());
  const { asked, single } = countReads(store);
  assert.equal(await recheckSessions(new SessionRegistry(), store), 0);
  assert.deepEqual(asked, []);
  assert.equal(single.n, 0);
});

test('recheck: one batched read for the live accounts; only withdrawn ones end', async (t) => {
  const store = await memoryDbStore();
  t.after(() => store.close());
  const mk = async (login: string) =>
    (await store.createAccount({ login, upstreamUser: `${login}@x`, provider: 'p' }, 't')).id;
  const [ok, off, gone, nogrant] = [await mk('ok'), await mk('off'), await mk('gone'), await mk('nogrant')];
  for (const id of [ok, off, gone]) await store.putGrant(id, grant, 't');
  await store.setAccountStatus(off, 'disabled', 't');
  await store.deleteAccount(gone, 't');
  const { asked, single } = countReads(store);
  const { reg, ended } = live([ok, off, gone, nogrant]);
  assert.equal(await recheckSessions(reg, store), 3);
  assert.deepEqual(asked, [[ok, off, gone, nogrant]]);
  assert.equal(single.n, 0, 'no per-account reads');
  assert.deepEqual(ended.sort(), [off, gone, nogrant].sort());
});

test('watchConsentLoss reports a committed needs_consent write, not other writes or rolled-back ones', async (t) => {
  const store = await memoryDbStore();
  t.after(() => store.close());
  const id = (await store.createAccount({ login: 'a', upstreamUser: 'a@x', provider: 'p' }, 't')).id;
  await store.putGrant(id, grant, 't');
  const lost: number[] = [];
  const watched = watchConsentLoss(store, (accountId) => lost.push(accountId));
  await watched.withGrantLock(id, (tx) => tx.update({ lastError: 'timeout' }));
  assert.deepEqual(lost, []);
  await assert.rejects(
    watched.withGrantLock(id, async (tx) => {
      await tx.update({ status: 'needs_consent' });
      throw new Error('rolled back');
    }),
  );
  assert.deepEqual(lost, [], 'a write that rolled back is not reported');
  await watched.withGrantLock(id, (tx) => tx.update({ status: 'needs_consent', lastError: 'invalid_grant' }));
  assert.deepEqual(lost, [id]);
  // Everything else reaches the real store (private fields and all).
  assert.equal((await watched.getGrant(id))?.status, 'needs_consent');
});

test('watchConsentLoss passes the early save of a rotated refresh token through to the real store', async (t) => {
  const store = await memoryDbStore();
  t.after(() => store.close());
  const id = (await store.createAccount({ login: 'b', upstreamUser: 'b@x', provider: 'p' }, 't')).id;
  await store.putGrant(id, grant, 't');
  const watched = watchConsentLoss(store, () => undefined);
  await assert.rejects(
    watched.withGrantLock(id, async (tx) => {
      assert.ok(tx.commitRefreshToken, 'the wrapped transaction offers the early save');
      await tx.commitRefreshToken('rt-rotated');
      // A crash right after the save: the rest of the transaction never commits.
      throw new Error('killed');
    }),
  );
  assert.equal(
    (await store.getGrant(id))?.refreshToken,
    'rt-rotated',
    'durable despite the failed transaction',
  );
});
