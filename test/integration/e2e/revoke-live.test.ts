import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { TerminationReason } from '../../../src/core/sessions.js';
import type { AccountState } from '../../../src/store/types.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { type Stack, startStack, type TestAccount } from '../../helpers/stack.js';
import { logLines } from '../observability/scrape.js';

// Withdrawn access ends live spliced sessions, on the real chain (oidc-provider ← Dovecot ←
// proxy). The store writes below are what `account disable|remove` and `grant revoke` do
// from another process: this proxy only finds out through its periodic recheck.

const RECHECK_S = 0.2;
/** Generous bound for "within the recheck interval" on a loaded 2-core machine. */
const CLOSE_WITHIN_MS = 3000;

/** A client logged in through the proxy, INBOX selected, idling (server pushes only). */
async function idling(s: Stack, a: TestAccount): Promise<RawImapClient> {
  const c = await RawImapClient.connect(s.ports.plain);
  await c.readLine();
  assert.match((await c.command('a', `LOGIN ${a.login} "${a.password}"`)).at(-1)!, /^a OK/);
  assert.match((await c.command('b', 'SELECT INBOX')).at(-1)!, /^b OK/);
  c.write('i IDLE\r\n');
  assert.match(await c.readLine(), /^\+ /);
  return c;
}

/** The session still answers: leave IDLE, then a NOOP round trip. */
async function stillServes(c: RawImapClient): Promise<void> {
  c.write('DONE\r\n');
  assert.match((await c.readUntil('i ')).at(-1)!, /^i OK/);
  assert.match((await c.command('n', 'NOOP')).at(-1)!, /^n OK/);
}

async function terminated(s: Stack, reason: TerminationReason): Promise<number> {
  const v = (await s.metrics.sessionsTerminated.get()).values.find((x) => x.labels.reason === reason);
  return v?.value ?? 0;
}

describe('withdrawn access closes live sessions', () => {
  let s: Stack;
  /** Batched store reads by the recheck: when, and the ids each asked for. */
  const reads: Array<{ at: number; ids: number[] }> = [];
  const open: RawImapClient[] = [];

  before(async () => {
    s = await startStack({ configYaml: () => `limits: { session_recheck_seconds: ${RECHECK_S} }` });
    // Counts the recheck's reads (the same store object the proxy uses) to see passes happen.
    const store = s.app.store;
    const real = store.accountStates!.bind(store);
    store.accountStates = (ids: readonly number[]): Promise<Map<number, AccountState>> => {
      reads.push({ at: Date.now(), ids: [...ids] });
      return real(ids);
    };
  });
  after(async () => {
    for (const c of open) c.close();
    await s?.close();
  });

  const session = async (a: TestAccount) => {
    const c = await idling(s, a);
    open.push(c);
    return c;
  };
  const passesAfter = async (n: number) => {
    const target = reads.length + n;
    const deadline = Date.now() + 5000;
    while (reads.length < target) {
      if (Date.now() > deadline) throw new Error(`only ${reads.length} recheck reads`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  test('account disable: the idling session is closed within the recheck interval, nothing is injected, others stay', async () => {
    const alice = await s.addAccount('alice');
    const bob = await s.addAccount('bob');
    const a = await session(alice);
    const b = await session(bob);
    const writtenAt = Date.now();
    await s.app.store.setAccountStatus(alice.account.id, 'disabled', 'test');
    await a.waitClosed(CLOSE_WITHIN_MS);
    // Both sockets destroyed, no BYE or other bytes written by the proxy into the stream.
    assert.equal(await a.readToClose(), '');
    assert.equal(await terminated(s, 'account_disabled'), 1);
    assert.equal(s.app.pipeline.sessions.count(alice.account.id), 0, 'the slot is freed');
    const line = logLines(s.logs()).find((l) => l.msg === 'live session closed: account disabled');
    assert.equal(line?.account, 'alice');
    assert.equal(line?.level, 30, 'logged at info');
    // Ended by the recheck pass that first could see the write: the one then in flight or the next.
    const passes = reads.filter((r) => r.at >= writtenAt && r.at <= Number(line?.time)).length;
    assert.ok(passes >= 1 && passes <= 2, `closed after ${passes} recheck passes, want 1 or 2`);
    await stillServes(b);
    // A new login of the disabled account is refused as before.
    const again = await RawImapClient.connect(s.ports.plain);
    open.push(again);
    await again.readLine();
    assert.match((await again.command('a', `LOGIN alice "${alice.password}"`)).at(-1)!, /^a NO/);
  });

  test('grant revoke (grant deleted): the session is closed; account remove likewise', async () => {
    const carol = await s.addAccount('carol');
    const dave = await s.addAccount('dave');
    const c = await session(carol);
    const d = await session(dave);
    await s.app.store.deleteGrant(carol.account.id, 'test');
    await c.waitClosed(CLOSE_WITHIN_MS);
    assert.equal(await terminated(s, 'no_grant'), 1);
    await s.app.store.deleteAccount(dave.account.id, 'test');
    await d.waitClosed(CLOSE_WITHIN_MS);
    assert.equal(await terminated(s, 'account_removed'), 1);
  });

  test('a grant set to needs_consent by another process closes the session', async () => {
    const erin = await s.addAccount('erin');
    const e = await session(erin);
    const g = (await s.app.store.getGrant(erin.account.id))!;
    const { accountId: _a, updatedAt: _u, ...rest } = g;
    await s.app.store.putGrant(erin.account.id, { ...rest, status: 'needs_consent' }, 'test');
    await e.waitClosed(CLOSE_WITHIN_MS);
    assert.equal(await terminated(s, 'needs_consent'), 1);
  });

  test('a healthy account keeps its session over several rechecks, each one batched read', async () => {
    const frank = await s.addAccount('frank');
    const grace = await s.addAccount('grace');
    const f = await session(frank);
    const g = await session(grace);
    await passesAfter(5);
    // Exactly the accounts with live sessions: bob (still idling from the first test), frank, grace.
    const live = [...reads.at(-1)!.ids].sort((x, y) => x - y);
    const bob = (await s.app.store.getAccountByLogin('bob'))!.id;
    assert.deepEqual(
      live,
      [bob, frank.account.id, grace.account.id].sort((x, y) => x - y),
    );
    await stillServes(f);
    await stillServes(g);
    assert.equal(s.app.pipeline.sessions.count(frank.account.id), 1);
  });
});

describe('access withdrawn inside this process', () => {
  let s: Stack;
  after(async () => s?.close());

  test('the broker marking the grant needs_consent closes the live session at once, not at the next recheck', async () => {
    // Rechecks an hour apart: only the in-process path can close the session in time.
    s = await startStack({ configYaml: () => 'limits: { session_recheck_seconds: 3600 }' });
    const hana = await s.addAccount('hana');
    const live = await idling(s, hana);
    try {
      // Revoking the refresh token at the OP ends its grant: the cached access token dies too.
      await s.op.revoke(hana.refreshToken!);
      const c = await RawImapClient.connect(s.ports.plain);
      try {
        await c.readLine();
        // Upstream rejects the token, the forced refresh gets invalid_grant: needs_consent.
        const r = await c.command('a', `LOGIN hana "${hana.password}"`);
        assert.match(r.at(-1)!, /^a NO \[EXPIRED\]/);
      } finally {
        c.close();
      }
      await live.waitClosed(CLOSE_WITHIN_MS);
      assert.equal((await s.app.store.getGrant(hana.account.id))?.status, 'needs_consent');
      assert.equal(await terminated(s, 'needs_consent'), 1);
    } finally {
      live.close();
    }
  });
});
