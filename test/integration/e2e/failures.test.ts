import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { RawImapClient } from '../../helpers/imap-client.js';
import { freePort } from '../../helpers/ports.js';
import { type Stack, startStack, type TestAccount, testMessage } from '../../helpers/stack.js';

/** Logs in over implicit TLS with a raw client and returns the tagged reply line. */
async function login(s: Stack, user: string, password: string): Promise<string> {
  const c = await RawImapClient.connect(s.ports.imaps, { tls: true });
  try {
    await c.readLine();
    const lines = await c.command('a', `LOGIN ${user} "${password}"`);
    const tagged = lines.at(-1)!;
    if (tagged.startsWith('a OK')) {
      const sel = await c.command('b', 'SELECT INBOX');
      assert.match(sel.at(-1)!, /^b OK/, 'the spliced session really reaches the mailbox');
    }
    return tagged;
  } finally {
    c.close();
  }
}

async function expireStoredToken(s: Stack, a: TestAccount, accessToken: string | null): Promise<void> {
  const g = (await s.app.store.getGrant(a.account.id))!;
  await s.app.store.putGrant(
    a.account.id,
    { ...g, accessToken, accessTokenExpiresAt: accessToken ? Date.now() + 3_600_000 : Date.now() - 60_000 },
    'test',
  );
}

describe('what a legacy client is told when something fails (real OP, real Dovecot)', () => {
  let s: Stack;

  before(async () => {
    s = await startStack();
  });
  after(async () => {
    s.op.setDown(false);
    await s?.close();
  });

  test('wrong app password and unknown user get the same AUTHENTICATIONFAILED reply', async () => {
    const a = await s.addAccount('carol');
    const wrong = await login(s, a.login, 'aaaa-bbbb-cccc-dddd-eeee-ffff');
    const unknown = await login(s, 'nobody-here', 'aaaa-bbbb-cccc-dddd-eeee-ffff');
    assert.equal(wrong, 'a NO [AUTHENTICATIONFAILED] Invalid credentials');
    assert.equal(unknown, wrong);
  });

  test('no grant yet → NO [CONTACTADMIN]; disabled account → NO [CONTACTADMIN]', async () => {
    const a = await s.addAccount('dave', { grant: 'none' });
    assert.match(await login(s, a.login, a.password), /^a NO \[CONTACTADMIN\] Mailbox not connected/);
    const b = await s.addAccount('erin');
    await s.app.store.setAccountStatus(b.account.id, 'disabled', 'test');
    assert.match(await login(s, b.login, b.password), /^a NO \[CONTACTADMIN\] Account disabled/);
  });

  test('upstream rejects the stored token once: one forced refresh, then the login succeeds', async () => {
    const a = await s.addAccount('frank');
    await s.dovecot.seed(a.upstreamUser, testMessage('frank'));
    await expireStoredToken(s, a, 'not-a-token-the-op-ever-issued');
    const before = s.op.tokenRequests();
    assert.match(await login(s, a.login, a.password), /^a OK \[CAPABILITY /);
    assert.equal(s.op.tokenRequests() - before, 1, 'exactly one refresh');
    const g = await s.app.store.getGrant(a.account.id);
    assert.notEqual(g!.accessToken, 'not-a-token-the-op-ever-issued', 'the fresh token was stored');
  });

  test('grant revoked at the OP → NO [EXPIRED] naming where to reconnect; grant kept as needs_consent', async () => {
    const a = await s.addAccount('grace');
    assert.match(await login(s, a.login, a.password), /^a OK/);
    await s.op.revoke(a.refreshToken!);
    const reply = await login(s, a.login, a.password);
    assert.match(reply, /^a NO \[EXPIRED\] /);
    assert.match(reply, /https:\/\/proxy\.example\.test\/connect/);
    const g = await s.app.store.getGrant(a.account.id);
    assert.equal(g?.status, 'needs_consent');
    // Later logins are answered from the stored status, without another token request.
    const before = s.op.tokenRequests();
    assert.match(await login(s, a.login, a.password), /^a NO \[EXPIRED\] /);
    assert.equal(s.op.tokenRequests(), before);
  });

  test('OP down but the cached token is still valid → the login succeeds', async () => {
    const a = await s.addAccount('heidi');
    s.op.setDown(true);
    try {
      assert.match(await login(s, a.login, a.password), /^a OK \[CAPABILITY /);
    } finally {
      s.op.setDown(false);
    }
  });

  test('OP down and the token expired → NO [UNAVAILABLE], and the grant is left active', async () => {
    const a = await s.addAccount('ivan');
    await expireStoredToken(s, a, null);
    s.op.setDown(true);
    try {
      assert.match(
        await login(s, a.login, a.password),
        /^a NO \[UNAVAILABLE\] Authorization server unavailable/,
      );
    } finally {
      s.op.setDown(false);
    }
    const g = await s.app.store.getGrant(a.account.id);
    assert.equal(g?.status, 'active');
    assert.ok(g?.lastError, 'the failure is recorded for the admin');
  });

  test('upstream down → NO [UNAVAILABLE] Mail server unavailable', async () => {
    const a = await s.addAccount('judy', { upstreamOverride: { port: await freePort() } });
    assert.match(await login(s, a.login, a.password), /^a NO \[UNAVAILABLE\] Mail server unavailable/);
  });
});

for (const upstreamTls of ['implicit', 'starttls'] as const) {
  for (const mechanism of ['xoauth2', 'oauthbearer'] as const) {
    describe(`upstream ${upstreamTls} TLS with ${mechanism.toUpperCase()}`, () => {
      let s: Stack;
      before(async () => {
        s = await startStack({ upstreamTls, mechanism });
      });
      after(async () => {
        await s?.close();
      });

      test('a client logs in, selects INBOX and reads the message', async () => {
        const a = await s.addAccount(`m-${upstreamTls}-${mechanism}`);
        const msg = testMessage(`mode-${upstreamTls}-${mechanism}`);
        await s.dovecot.seed(a.upstreamUser, msg);
        const c = await RawImapClient.connect(s.ports.imaps, { tls: true });
        try {
          await c.readLine();
          assert.match((await c.command('a', `LOGIN ${a.login} ${a.password}`)).at(-1)!, /^a OK/);
          await c.command('b', 'SELECT INBOX');
          const fetched = (await c.command('c', 'UID FETCH 1 BODY.PEEK[]')).join('\r\n');
          assert.ok(fetched.includes(msg.toString().trimEnd()), fetched);
        } finally {
          c.close();
        }
        const auths = await s.metrics.upstreamAuths.get();
        const ok = auths.values.find(
          (v) => v.labels.mechanism === mechanism && v.labels.result === 'success',
        );
        assert.equal(ok?.value, 1, `upstream authenticated with ${mechanism}`);
      });
    });
  }
}
