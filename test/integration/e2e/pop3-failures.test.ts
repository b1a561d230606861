import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { connectPop3, type Pop3Client } from '../../helpers/pop3-client.js';
import { freePort } from '../../helpers/ports.js';
import {
  loginCount,
  type Stack,
  setStoredToken,
  startStack,
  upstreamAuthCount,
  withCredentials,
} from '../../helpers/stack.js';

// Every row of the POP3 reply table, end to end on real components (oidc-provider, Dovecot
// POP3). No fakes: the mailbox lock is Dovecot's own pop3_lock_session.

const CONNECT = 'https://proxy.example.test/connect';
const REQUIRED_SCOPE = 'https://mail.example.test/pop3.read';

/** Connects (implicit TLS unless `cleartext`), sends USER and PASS; returns PASS's reply line. */
async function login(
  s: Stack,
  user: string,
  password: string,
  o: { cleartext?: boolean; hold?: (c: Pop3Client) => void } = {},
): Promise<string> {
  const c = await connectPop3({
    host: '127.0.0.1',
    port: o.cleartext ? s.ports.pop3 : s.ports.pop3s,
    tls: o.cleartext ? 'none' : 'implicit',
    ca: s.proxyCaFile,
  });
  let held = false;
  try {
    assert.match(c.greeting, /^\+OK /);
    const u = await c.command(`USER ${user}`);
    // Refused before PASS: that is the answer.
    if (!u.startsWith('+OK')) return u;
    const r = await c.command(`PASS ${password}`, 15_000);
    if (r.startsWith('+OK') && o.hold) {
      o.hold(c);
      held = true;
    }
    return r;
  } finally {
    if (!held) c.close();
  }
}

const logins = (s: Stack, result: string) => loginCount(s, 'pop3', result);
const upstreamAuths = (s: Stack, result: string) => upstreamAuthCount(s, 'pop3', result);

describe('what a POP3 client is told when a login fails, row by row (real OP and Dovecot POP3)', () => {
  /** The main chain: OP ← Dovecot ← proxy. */
  let s: Stack;
  /** Same OP and Dovecot; the provider's upstreams.pop3 requires a scope the OP never grants. */
  let scoped: Stack;
  /** Its own OP; its Dovecot introspects at s's OP, so every token this stack gets is inactive there. */
  let rejecting: Stack;
  let foreign: Dovecot;
  /** Same OP; its Dovecot lets one POP3 session at a time hold a mailbox. */
  let locking: Stack;
  let lockingDovecot: Dovecot;
  const holders: Pop3Client[] = [];

  before(async () => {
    s = await startStack();
    const introspectionUrl = withCredentials(
      s.op.introspection.url,
      s.op.introspection.id,
      s.op.introspection.secret,
    );
    [foreign, lockingDovecot, scoped] = await Promise.all([
      startDovecot({ introspectionUrl }),
      startDovecot({ introspectionUrl, extraConfig: 'protocol pop3 {\n  pop3_lock_session = yes\n}\n' }),
      startStack({ op: s.op, dovecot: s.dovecot, pop3Upstream: () => ({ required_scope: REQUIRED_SCOPE }) }),
    ]);
    [rejecting, locking] = await Promise.all([
      startStack({ dovecot: foreign }),
      // Dovecot waits up to ~15 s for the POP3 session lock before it answers [IN-USE].
      startStack({ op: s.op, dovecot: lockingDovecot, pop3Upstream: () => ({ auth_timeout_seconds: 25 }) }),
    ]);
  });
  after(async () => {
    for (const h of holders) h.close();
    s?.op.setDown(false);
    await Promise.all([scoped?.close(), rejecting?.close(), locking?.close()]);
    await Promise.all([foreign?.stop(), lockingDovecot?.stop()]);
    await s?.close();
  });

  // Independent rows at once: Dovecot answers every failed authentication from a 500 ms timer.
  describe('rows that can run side by side', { concurrency: true }, () => {
    test('wrong app password and unknown user: the same -ERR [AUTH] (bad_credentials)', async () => {
      const a = await s.addAccount('carol');
      const wrong = await login(s, a.login, 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      const unknown = await login(s, 'nobody-here', 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      assert.equal(wrong, '-ERR [AUTH] Invalid credentials');
      assert.equal(unknown, wrong);
      assert.equal(await logins(s, 'bad_credentials'), 2);
    });

    test('USER on the cleartext start of the STLS listener: -ERR [AUTH] use STLS (privacy_required)', async () => {
      const a = await s.addAccount('cleartext');
      assert.equal(
        await login(s, a.login, a.password, { cleartext: true }),
        '-ERR [AUTH] Use STLS or implicit TLS before logging in',
      );
      assert.equal(await logins(s, 'privacy_required'), 1);
    });

    test('per-account cap reached (maxSessions 1, one session held): -ERR [SYS/TEMP] (session_limit)', async () => {
      const a = await s.addAccount('capped', { maxSessions: 1 });
      assert.equal(await login(s, a.login, a.password, { hold: (c) => holders.push(c) }), '+OK Logged in');
      assert.equal(
        await login(s, a.login, a.password),
        '-ERR [SYS/TEMP] Too many concurrent sessions for this account; try again later',
      );
      assert.equal(await logins(s, 'session_limit'), 1);
    });

    test('grant revoked at the OP: -ERR [AUTH] naming where to reconnect (needs_consent)', async () => {
      const a = await s.addAccount('revoked');
      await s.op.revoke(a.refreshToken!);
      assert.equal(
        await login(s, a.login, a.password),
        `-ERR [AUTH] Mailbox authorization expired. Reconnect the mailbox at ${CONNECT}`,
      );
      assert.equal((await s.app.store.getGrant(a.account.id))?.status, 'needs_consent');
      assert.equal(await logins(s, 'needs_consent'), 1);
    });

    test('no grant yet: -ERR [AUTH] + contact the administrator (no_grant); disabled account likewise', async () => {
      const a = await s.addAccount('ungranted', { grant: 'none' });
      assert.equal(
        await login(s, a.login, a.password),
        '-ERR [AUTH] Mailbox not connected yet; contact your administrator',
      );
      assert.equal(await logins(s, 'no_grant'), 1);
      const b = await s.addAccount('switched-off');
      await s.app.store.setAccountStatus(b.account.id, 'disabled', 'test');
      assert.equal(
        await login(s, b.login, b.password),
        '-ERR [AUTH] Account disabled; contact your administrator',
      );
      assert.equal(await logins(s, 'account_disabled'), 1);
    });

    test('upstream unreachable: -ERR [SYS/TEMP] (upstream_unavailable)', async () => {
      const a = await s.addAccount('unreachable', { upstreamOverride: { pop3: { port: await freePort() } } });
      assert.equal(
        await login(s, a.login, a.password),
        '-ERR [SYS/TEMP] Mail server unavailable; try again later',
      );
      assert.equal(await logins(s, 'upstream_unavailable'), 1);
    });

    test('upstream refuses a fresh token too: -ERR [AUTH] after exactly one forced refresh (upstream_rejected)', async () => {
      const a = await rejecting.addAccount('refused');
      const before = rejecting.op.tokenRequests();
      assert.equal(
        await login(rejecting, a.login, a.password),
        '-ERR [AUTH] Mail server rejected the authorization',
      );
      assert.equal(rejecting.op.tokenRequests() - before, 1, 'exactly one forced refresh');
      assert.equal(
        await upstreamAuths(rejecting, 'upstream_rejected'),
        2,
        'the stored token, then the fresh one',
      );
      assert.notEqual((await rejecting.app.store.getGrant(a.account.id))?.accessToken, a.accessToken);
      assert.equal(await logins(rejecting, 'upstream_rejected'), 1);
    });

    test("grant without the provider's upstreams.pop3.required_scope: -ERR [AUTH] + reconnect to allow this (scope_missing)", async () => {
      const a = await scoped.addAccount('narrow');
      // The scope is learned from the token endpoint's answer: make the next login refresh.
      await setStoredToken(scoped, a, null);
      assert.equal(
        await login(scoped, a.login, a.password),
        '-ERR [AUTH] The mailbox was connected without permission for POP3. ' +
          `Reconnect the mailbox at ${CONNECT} to allow this (pop3.read)`,
      );
      assert.equal(await logins(scoped, 'scope_missing'), 1);
      assert.equal(
        (await upstreamAuths(scoped, 'success')) + (await upstreamAuths(scoped, 'upstream_rejected')),
        0,
      );
    });

    test('mailbox locked by a first POP3 session held open through the proxy: -ERR [IN-USE] (mailbox_in_use)', async () => {
      const a = await locking.addAccount('locked');
      let first: Pop3Client | undefined;
      assert.equal(
        await login(locking, a.login, a.password, {
          hold: (c) => {
            first = c;
            holders.push(c);
          },
        }),
        '+OK Logged in',
      );
      // The first session really holds the maildrop: it answers a transaction command.
      assert.match(await first!.command('STAT'), /^\+OK \d+ \d+$/);
      assert.equal(
        await login(locking, a.login, a.password),
        '-ERR [IN-USE] Mailbox in use by another session; try again later',
      );
      assert.equal(await logins(locking, 'mailbox_in_use'), 1);
      assert.equal(await upstreamAuths(locking, 'mailbox_in_use'), 1, 'no retry: the lock outlasts a retry');
      // Once the first session ends, the same mailbox logs in again.
      assert.match(await first!.command('QUIT'), /^\+OK/);
      await first!.closed(10_000);
      assert.equal(await login(locking, a.login, a.password), '+OK Logged in');
    });
  });

  // Sequential: the OP is shared, and while it is down nothing else may refresh.
  test('token endpoint down and the stored token expired: -ERR [SYS/TEMP] (token_unavailable)', async () => {
    const a = await s.addAccount('no-refresh');
    await setStoredToken(s, a, null);
    s.op.setDown(true);
    try {
      assert.equal(
        await login(s, a.login, a.password),
        '-ERR [SYS/TEMP] Authorization server unavailable; try again later',
      );
    } finally {
      s.op.setDown(false);
    }
    assert.equal(await logins(s, 'token_unavailable'), 1);
    assert.equal(
      (await s.app.store.getGrant(a.account.id))?.status,
      'active',
      'a transient failure keeps the grant',
    );
  });
});
