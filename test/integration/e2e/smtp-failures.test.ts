import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { type FakeSmtpUpstream, startFakeSmtpUpstream } from '../../helpers/fake-smtp-upstream.js';
import { freePort } from '../../helpers/ports.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import {
  loginCount,
  type Stack,
  setStoredToken,
  startStack,
  upstreamAuthCount,
  withCredentials,
} from '../../helpers/stack.js';

// Every row of the SMTP reply table, end to end on real components (oidc-provider, Dovecot
// submission). The one fake: Microsoft's 535 5.7.139 "SMTP AUTH disabled", because no real
// Microsoft tenant is reachable from here and no server that runs here answers that way.

const CONNECT = 'https://proxy.example.test/connect';
const REQUIRED_SCOPE = 'https://mail.example.test/smtp.send';

/** Connects (TLS unless `cleartext`), says EHLO, sends AUTH PLAIN; returns the reply as one line. */
async function auth(
  s: Stack,
  login: string,
  password: string,
  o: { cleartext?: boolean; hold?: (c: SmtpClient) => void } = {},
): Promise<string> {
  const c = await connectSmtp({
    host: '127.0.0.1',
    port: o.cleartext ? s.ports.submission : s.ports.submissions,
    tls: o.cleartext ? 'none' : 'implicit',
    ca: s.proxyCaFile,
  });
  let held = false;
  try {
    assert.equal((await c.ehlo('copier.example.net')).code, 250);
    const ir = Buffer.from(`\0${login}\0${password}`).toString('base64');
    const r = await c.command(`AUTH PLAIN ${ir}`, 15_000);
    if (r.code === 235 && o.hold) {
      o.hold(c);
      held = true;
    }
    return `${r.code} ${r.lines.join(' ')}`;
  } finally {
    if (!held) c.close();
  }
}

const logins = (s: Stack, result: string) => loginCount(s, 'smtp', result);
const upstreamAuths = (s: Stack, result: string) => upstreamAuthCount(s, 'smtp', result);

describe('what an SMTP client is told when a login fails, row by row (real OP and Dovecot submission)', () => {
  /** The main chain: OP ← Dovecot ← proxy. */
  let s: Stack;
  /** Same OP and Dovecot; the provider's upstreams.smtp requires a scope the OP never grants. */
  let scoped: Stack;
  /** Its own OP; its Dovecot introspects at s's OP, so every token this stack gets is inactive there. */
  let rejecting: Stack;
  let foreign: Dovecot;
  /** Same OP; the provider's upstreams.smtp is the fake with SMTP AUTH switched off. */
  let disabled: Stack;
  let fake: FakeSmtpUpstream;
  const holders: SmtpClient[] = [];

  before(async () => {
    s = await startStack();
    [foreign, fake, scoped] = await Promise.all([
      startDovecot({
        introspectionUrl: withCredentials(
          s.op.introspection.url,
          s.op.introspection.id,
          s.op.introspection.secret,
        ),
      }),
      startFakeSmtpUpstream({ tls: 'implicit', accept: new Set(), reject: 'disabled' }),
      startStack({ op: s.op, dovecot: s.dovecot, smtpUpstream: () => ({ required_scope: REQUIRED_SCOPE }) }),
    ]);
    [rejecting, disabled] = await Promise.all([
      startStack({ dovecot: foreign }),
      startStack({
        op: s.op,
        dovecot: s.dovecot,
        smtpUpstream: () => ({
          host: fake.host,
          port: fake.port,
          tls: 'implicit',
          ca_file: fake.caFile,
          mechanism: 'xoauth2',
        }),
      }),
    ]);
  });
  after(async () => {
    for (const h of holders) h.close();
    s?.op.setDown(false);
    await Promise.all([scoped?.close(), rejecting?.close(), disabled?.close()]);
    await Promise.all([foreign?.stop(), fake?.close()]);
    await s?.close();
  });

  // Independent rows at once: Dovecot answers every failed authentication from a 500 ms timer.
  describe('rows that can run side by side', { concurrency: true }, () => {
    test('wrong app password and unknown user: the same 535 5.7.8 (bad_credentials)', async () => {
      const a = await s.addAccount('carol');
      const wrong = await auth(s, a.login, 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      const unknown = await auth(s, 'nobody-here', 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      assert.equal(wrong, '535 5.7.8 Authentication credentials invalid');
      assert.equal(unknown, wrong);
      assert.equal(await logins(s, 'bad_credentials'), 2);
    });

    test('AUTH before STARTTLS on the submission listener: 538 5.7.11 (privacy_required)', async () => {
      const a = await s.addAccount('cleartext');
      assert.match(
        await auth(s, a.login, a.password, { cleartext: true }),
        /^538 5\.7\.11 Encryption required/,
      );
      assert.equal(await logins(s, 'privacy_required'), 1);
    });

    test('per-account cap reached (maxSessions 1, one session held): 454 4.7.0 (session_limit)', async () => {
      const a = await s.addAccount('capped', { maxSessions: 1 });
      const first = await auth(s, a.login, a.password, { hold: (c) => holders.push(c) });
      assert.match(first, /^235 2\.7\.0 /);
      assert.equal(
        await auth(s, a.login, a.password),
        '454 4.7.0 Too many concurrent sessions for this account; try again later',
      );
      assert.equal(await logins(s, 'session_limit'), 1);
    });

    test('grant revoked at the OP: 535 5.7.8 naming where to reconnect (needs_consent)', async () => {
      const a = await s.addAccount('revoked');
      await s.op.revoke(a.refreshToken!);
      assert.equal(
        await auth(s, a.login, a.password),
        `535 5.7.8 Mailbox authorization expired. Reconnect the mailbox at ${CONNECT}`,
      );
      assert.equal((await s.app.store.getGrant(a.account.id))?.status, 'needs_consent');
      assert.equal(await logins(s, 'needs_consent'), 1);
    });

    test('no grant yet: 535 5.7.8 + contact the administrator (no_grant); disabled account likewise', async () => {
      const a = await s.addAccount('ungranted', { grant: 'none' });
      assert.equal(
        await auth(s, a.login, a.password),
        '535 5.7.8 Mailbox not connected yet; contact your administrator',
      );
      assert.equal(await logins(s, 'no_grant'), 1);
      const b = await s.addAccount('switched-off');
      await s.app.store.setAccountStatus(b.account.id, 'disabled', 'test');
      assert.equal(
        await auth(s, b.login, b.password),
        '535 5.7.8 Account disabled; contact your administrator',
      );
      assert.equal(await logins(s, 'account_disabled'), 1);
    });

    test('upstream unreachable: 454 4.7.0 (upstream_unavailable)', async () => {
      const a = await s.addAccount('unreachable', { upstreamOverride: { smtp: { port: await freePort() } } });
      assert.equal(await auth(s, a.login, a.password), '454 4.7.0 Mail server unavailable; try again later');
      assert.equal(await logins(s, 'upstream_unavailable'), 1);
    });

    test('upstream refuses a fresh token too: 535 5.7.8 after exactly one forced refresh (upstream_rejected)', async () => {
      const a = await rejecting.addAccount('refused');
      const before = rejecting.op.tokenRequests();
      assert.equal(
        await auth(rejecting, a.login, a.password),
        '535 5.7.8 Mail server rejected the authorization',
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

    test("grant without the provider's upstreams.smtp.required_scope: 535 5.7.8 + reconnect to allow this (scope_missing)", async () => {
      const a = await scoped.addAccount('narrow');
      // The scope is learned from the token endpoint's answer: make the next login refresh.
      await setStoredToken(scoped, a, null);
      assert.equal(
        await auth(scoped, a.login, a.password),
        '535 5.7.8 The mailbox was connected without permission to send mail. ' +
          `Reconnect the mailbox at ${CONNECT} to allow this (smtp.send)`,
      );
      assert.equal(await logins(scoped, 'scope_missing'), 1);
      assert.equal(
        (await upstreamAuths(scoped, 'success')) + (await upstreamAuths(scoped, 'upstream_rejected')),
        0,
      );
    });

    test('SMTP AUTH disabled at the provider (fake 5.7.139): 535 5.7.139 + what to enable (protocol_disabled)', async () => {
      const a = await disabled.addAccount('no-smtp-auth');
      const reply = await auth(disabled, a.login, a.password);
      assert.match(reply, /^535 5\.7\.139 Authenticated SMTP is switched off/);
      assert.match(reply, /the administrator must enable authenticated SMTP/);
      assert.match(reply, /Set-CASMailbox -SmtpClientAuthenticationDisabled \$false/);
      assert.equal(fake.tokens.length, 1, 'no retry: a fresh token cannot switch SMTP AUTH on');
      assert.equal(await logins(disabled, 'protocol_disabled'), 1);
    });
  });

  // Sequential: the OP is shared, and while it is down nothing else may refresh.
  test('token endpoint down and the stored token expired: 454 4.7.0 (token_unavailable)', async () => {
    const a = await s.addAccount('no-refresh');
    await setStoredToken(s, a, null);
    s.op.setDown(true);
    try {
      assert.equal(
        await auth(s, a.login, a.password),
        '454 4.7.0 Authorization server unavailable; try again later',
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
