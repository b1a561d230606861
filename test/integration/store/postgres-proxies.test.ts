import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { startPostgres, type TestPostgres } from '../../helpers/postgres.js';
import { type Stack, startStack, type TestAccount, testMessage } from '../../helpers/stack.js';

/** Logs in on the cleartext-allowed listener and returns the tagged LOGIN reply. */
async function login(port: number, acct: TestAccount): Promise<{ c: RawImapClient; reply: string }> {
  const c = await RawImapClient.connect(port);
  await c.readLine();
  const lines = await c.command('a', `LOGIN ${acct.login} "${acct.password}"`);
  return { c, reply: lines.at(-1)! };
}

describe('two proxies share one PostgreSQL grant store (real OP, Dovecot, proxy chain)', () => {
  let pgServer: TestPostgres;
  let proxyA: Stack;
  let proxyB: Stack;

  before(async () => {
    pgServer = await startPostgres();
    const url = await pgServer.database();
    const shared = {
      encryptionKey: generateKeyLine('k1'),
      configYaml: () => `store: { driver: postgres, postgres_url: ${JSON.stringify(url)} }`,
      logLevel: 'info',
    };
    proxyA = await startStack(shared);
    proxyB = await startStack({ ...shared, op: proxyA.op, dovecot: proxyA.dovecot });
    // The URL carries the database password: neither proxy may log it (checked at close()).
    proxyA.secrets.add(pgServer.password);
    proxyB.secrets.add(pgServer.password);
  });
  after(async () => {
    await proxyB?.close();
    await proxyA?.close();
    await pgServer?.stop();
  });

  test('an account added through one proxy reads its mail through the other', async () => {
    const alice = await proxyA.addAccount('alice');
    const msg = testMessage('pg-shared-store', 'Read through the second proxy.');
    await proxyA.dovecot.seed(alice.upstreamUser, msg);
    const { c, reply } = await login(proxyB.ports.plain, alice);
    try {
      assert.match(reply, /^a OK /);
      assert.match((await c.command('b', 'SELECT INBOX')).at(-1)!, /^b OK /);
      const fetched = (await c.command('f', 'FETCH 1 BODY.PEEK[]')).join('\r\n');
      assert.ok(fetched.includes('Subject: pg-shared-store'), fetched);
      assert.ok(fetched.includes('Read through the second proxy.'));
    } finally {
      c.close();
    }
    assert.match(proxyA.logs(), /postgres store ready/);
  });

  test('an expired token, logins on both proxies at once: one refresh at the token endpoint', async () => {
    const bob = await proxyA.addAccount('bob');
    const stored = (await proxyA.app.store.getGrant(bob.account.id))!;
    await proxyA.app.store.putGrant(
      bob.account.id,
      { ...stored, accessTokenExpiresAt: Date.now() - 1_000 },
      'test',
    );
    const before = proxyA.op.tokenRequests();
    const sessions = await Promise.all(
      [proxyA, proxyB, proxyA, proxyB, proxyA, proxyB].map((p) => login(p.ports.plain, bob)),
    );
    for (const s of sessions) s.c.close();
    assert.deepEqual(
      sessions.map((s) => s.reply.slice(0, 4)),
      Array(6).fill('a OK'),
      sessions.map((s) => s.reply).join('\n'),
    );
    assert.equal(proxyA.op.tokenRequests() - before, 1, 'exactly one refresh over both proxies');
    const after = (await proxyB.app.store.getGrant(bob.account.id))!;
    assert.ok(after.accessTokenExpiresAt! > Date.now(), 'the fresh token is stored for every instance');
    assert.notEqual(after.accessToken, stored.accessToken);
  });
});
