import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Dovecot, startDovecot } from './dovecot.js';
import { freePort } from './ports.js';
import {
  loginCount,
  type Stack,
  setStoredToken,
  startStack,
  upstreamAuthCount,
  withCredentials,
} from './stack.js';

/**
 * The rows of the reply table (DESIGN.md, "What a client is told") that every login protocol
 * meets alike, end to end on real components (oidc-provider, Dovecot): one function registers
 * them for a protocol, with that protocol's replies, so SMTP and POP3 cannot drift apart.
 */

/** Where a client is sent to reconnect a mailbox (the stack's public URL). */
export const CONNECT = 'https://proxy.example.test/connect';

/** Logs in as `user`; returns the reply to the password as one line. `hold` keeps a logged-in session open. */
export type TableLogin<C> = (
  s: Stack,
  user: string,
  password: string,
  o?: { cleartext?: boolean; hold?: (c: C) => void },
) => Promise<string>;

/** A protocol's test client, as the table logs in with it. */
export interface TableClient<C> {
  connect(o: { host: string; port: number; tls: 'none' | 'implicit'; ca: string }): Promise<C>;
  /** The proxy's listeners: cleartext (login refused until TLS), implicit TLS. */
  ports(s: Stack): [cleartext: number, implicitTls: number];
  /** Logs in on `c`: the reply to the password (or an earlier refusal), and whether it let the client in. */
  login(c: C, user: string, password: string): Promise<{ reply: string; ok: boolean }>;
}

/** A TableLogin over implicit TLS (cleartext on request) that closes the client unless it is held. */
export function tableLogin<C extends { close(): void }>(client: TableClient<C>): TableLogin<C> {
  return async (s, user, password, o = {}) => {
    const [cleartext, implicitTls] = client.ports(s);
    const c = await client.connect({
      host: '127.0.0.1',
      port: o.cleartext ? cleartext : implicitTls,
      tls: o.cleartext ? 'none' : 'implicit',
      ca: s.proxyCaFile,
    });
    let held = false;
    try {
      const { reply, ok } = await client.login(c, user, password);
      if (ok && o.hold) {
        o.hold(c);
        held = true;
      }
      return reply;
    } finally {
      if (!held) c.close();
    }
  };
}

/**
 * The protocol's replies where they differ, and its reply codes; every other row is answered
 * with the code and the same text in every protocol.
 */
export interface TableReplies {
  /** The code of a refused login, e.g. `535 5.7.8`. */
  authCode: string;
  /** The code of a temporary failure, e.g. `454 4.7.0`. */
  tempCode: string;
  /** The title of the row where a login on cleartext is refused. */
  privacyTitle: string;
  loggedIn: string | RegExp;
  badCredentials: string;
  privacyRequired: string | RegExp;
  scopeMissing: string;
}

export interface TableOptions<C extends { close(): void }, X> {
  protocol: 'smtp' | 'pop3';
  login: TableLogin<C>;
  /** A scope the OP never grants: the `scoped` stack's upstream requires it. */
  requiredScope: string;
  replies: TableReplies;
  /** What only this protocol's own rows need, started beside the shared stacks; `cleanup` stops each piece, last first. */
  extra(s: Stack, introspectionUrl: string, cleanup: (stop: () => Promise<void>) => void): Promise<X>;
}

/** The stacks the rows run on, set once the suite has started. */
export interface TableStacks<C, X> {
  /** The main chain: OP ← Dovecot ← proxy. */
  s: Stack;
  /** Same OP and Dovecot; the provider's upstream requires a scope the OP never grants. */
  scoped: Stack;
  /** Its own OP; its Dovecot introspects at s's OP, so every token this stack gets is inactive there. */
  rejecting: Stack;
  extra: X;
  /** Keeps a logged-in client open until the suite ends. */
  hold(c: C): void;
}

const expectReply = (actual: string, expected: string | RegExp) =>
  typeof expected === 'string' ? assert.equal(actual, expected) : assert.match(actual, expected);

/**
 * Registers the stacks and the shared rows in the current suite; `ownRows` adds the protocol's
 * own rows beside them (run side by side: Dovecot answers every failed authentication from a
 * 500 ms timer).
 */
export function failureTable<C extends { close(): void }, X>(
  p: TableOptions<C, X>,
  ownRows: (t: TableStacks<C, X>) => void,
): void {
  const { login, replies: r, protocol } = p;
  const holders: C[] = [];
  const hold = (c: C): void => {
    holders.push(c);
  };
  const t = { hold } as TableStacks<C, X>;
  let foreign: Dovecot | undefined;
  const cleanups: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const stop of cleanups.reverse()) await stop();
  };
  const logins = (s: Stack, result: string) => loginCount(s, protocol, result);
  const upstreamAuths = (s: Stack, result: string) => upstreamAuthCount(s, protocol, result);

  before(async () => {
    t.s = await startStack();
    const { s } = t;
    const introspectionUrl = withCredentials(
      s.op.introspection.url,
      s.op.introspection.id,
      s.op.introspection.secret,
    );
    const scope = () => ({ required_scope: p.requiredScope });
    const upstream = protocol === 'smtp' ? { smtpUpstream: scope } : { pop3Upstream: scope };
    await Promise.all([
      (async () => {
        [foreign, t.scoped] = await Promise.all([
          startDovecot({ introspectionUrl }),
          startStack({ op: s.op, dovecot: s.dovecot, ...upstream }),
        ]);
        t.rejecting = await startStack({ dovecot: foreign });
      })(),
      (async () => {
        t.extra = await p.extra(s, introspectionUrl, (stop) => cleanups.push(stop));
      })(),
    ]);
  });
  after(async () => {
    for (const h of holders) h.close();
    t.s?.op.setDown(false);
    await Promise.all([t.scoped?.close(), t.rejecting?.close(), cleanup()]);
    await foreign?.stop();
    await t.s?.close();
  });

  describe('rows that can run side by side', { concurrency: true }, () => {
    test(`wrong app password and unknown user: the same ${r.authCode} (bad_credentials)`, async () => {
      const { s } = t;
      const a = await s.addAccount('carol');
      const wrong = await login(s, a.login, 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      const unknown = await login(s, 'nobody-here', 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      assert.equal(wrong, r.badCredentials);
      assert.equal(unknown, wrong);
      assert.equal(await logins(s, 'bad_credentials'), 2);
    });

    test(r.privacyTitle, async () => {
      const { s } = t;
      const a = await s.addAccount('cleartext');
      expectReply(await login(s, a.login, a.password, { cleartext: true }), r.privacyRequired);
      assert.equal(await logins(s, 'privacy_required'), 1);
    });

    test(`per-account cap reached (maxSessions 1, one session held): ${r.tempCode} (session_limit)`, async () => {
      const { s } = t;
      const a = await s.addAccount('capped', { maxSessions: 1 });
      expectReply(await login(s, a.login, a.password, { hold: t.hold }), r.loggedIn);
      assert.equal(
        await login(s, a.login, a.password),
        `${r.tempCode} Too many concurrent sessions for this account; try again later`,
      );
      assert.equal(await logins(s, 'session_limit'), 1);
    });

    test(`grant revoked at the OP: ${r.authCode} naming where to reconnect (needs_consent)`, async () => {
      const { s } = t;
      const a = await s.addAccount('revoked');
      await s.op.revoke(a.refreshToken!);
      assert.equal(
        await login(s, a.login, a.password),
        `${r.authCode} Mailbox authorization expired. Reconnect the mailbox at ${CONNECT}`,
      );
      assert.equal((await s.app.store.getGrant(a.account.id))?.status, 'needs_consent');
      assert.equal(await logins(s, 'needs_consent'), 1);
    });

    test(`no grant yet: ${r.authCode} + contact the administrator (no_grant); disabled account likewise`, async () => {
      const { s } = t;
      const a = await s.addAccount('ungranted', { grant: 'none' });
      assert.equal(
        await login(s, a.login, a.password),
        `${r.authCode} Mailbox not connected yet; contact your administrator`,
      );
      assert.equal(await logins(s, 'no_grant'), 1);
      const b = await s.addAccount('switched-off');
      await s.app.store.setAccountStatus(b.account.id, 'disabled', 'test');
      assert.equal(
        await login(s, b.login, b.password),
        `${r.authCode} Account disabled; contact your administrator`,
      );
      assert.equal(await logins(s, 'account_disabled'), 1);
    });

    test(`upstream unreachable: ${r.tempCode} (upstream_unavailable)`, async () => {
      const { s } = t;
      const a = await s.addAccount('unreachable', {
        upstreamOverride: { [protocol]: { port: await freePort() } },
      });
      assert.equal(
        await login(s, a.login, a.password),
        `${r.tempCode} Mail server unavailable; try again later`,
      );
      assert.equal(await logins(s, 'upstream_unavailable'), 1);
    });

    test(`upstream refuses a fresh token too: ${r.authCode} after exactly one forced refresh (upstream_rejected)`, async () => {
      const { rejecting } = t;
      const a = await rejecting.addAccount('refused');
      const before = rejecting.op.tokenRequests();
      assert.equal(
        await login(rejecting, a.login, a.password),
        `${r.authCode} Mail server rejected the authorization`,
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

    test(`grant without the provider's upstreams.${protocol}.required_scope: ${r.authCode} + reconnect to allow this (scope_missing)`, async () => {
      const { scoped } = t;
      const a = await scoped.addAccount('narrow');
      // The scope is learned from the token endpoint's answer: make the next login refresh.
      await setStoredToken(scoped, a, null);
      assert.equal(await login(scoped, a.login, a.password), r.scopeMissing);
      assert.equal(await logins(scoped, 'scope_missing'), 1);
      assert.equal(
        (await upstreamAuths(scoped, 'success')) + (await upstreamAuths(scoped, 'upstream_rejected')),
        0,
      );
    });

    ownRows(t);
  });

  // Sequential: the OP is shared, and while it is down nothing else may refresh.
  test(`token endpoint down and the stored token expired: ${r.tempCode} (token_unavailable)`, async () => {
    const { s } = t;
    const a = await s.addAccount('no-refresh');
    await setStoredToken(s, a, null);
    const unavailable = `${r.tempCode} Authorization server unavailable; try again later`;
    s.op.setDown(true);
    try {
      assert.equal(await login(s, a.login, a.password), unavailable);
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
}
