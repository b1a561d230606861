import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { ImapFlow } from 'imapflow';
import { until, withDeadline } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { type Stack, startStack, type TestAccount, testMessage } from '../../helpers/stack.js';

const run = promisify(execFile);
const PY = 'test/helpers/clients/imaplib_client.py';

interface PyResult {
  login?: string;
  select?: string;
  exists?: number;
  message_b64?: string;
  capabilities?: string[];
  error?: string;
}

async function imaplib(
  port: number,
  mode: string,
  ca: string,
  user: string,
  password: string,
  mech = 'login',
  uid = '1',
) {
  const { stdout } = await run('python3', [PY, '127.0.0.1', String(port), mode, ca, user, '-', mech, uid], {
    env: { ...process.env, IMAP_PASSWORD: password },
    timeout: 30_000,
  });
  return JSON.parse(stdout) as PyResult;
}

function imapflow(s: Stack, a: TestAccount, opts: { secure?: boolean } = {}) {
  const secure = opts.secure ?? true;
  return new ImapFlow({
    host: '127.0.0.1',
    port: secure ? s.ports.imaps : s.ports.starttls,
    secure,
    doSTARTTLS: secure ? undefined : true,
    auth: { user: a.login, pass: a.password },
    tls: { ca: [readFileSync(s.proxyCaFile)], rejectUnauthorized: true },
    logger: false,
  });
}

describe('real clients read real mail through the proxy (Dovecot upstream, oidc-provider grants)', () => {
  let s: Stack;
  let alice: TestAccount;
  const seeded = testMessage('e2e-seeded', 'Body of the seeded message, exactly these bytes.');

  before(async () => {
    s = await startStack();
    alice = await s.addAccount('alice');
    await s.dovecot.seed(alice.upstreamUser, seeded);
  });
  after(async () => {
    await s?.close();
  });

  test('Python imaplib: LOGIN over STARTTLS fetches the seeded message byte-exact', async () => {
    const r = await imaplib(s.ports.starttls, 'starttls', s.proxyCaFile, alice.login, alice.password);
    assert.equal(r.error, undefined, r.error);
    assert.equal(r.login, 'OK');
    assert.deepEqual(Buffer.from(r.message_b64!, 'base64'), seeded);
  });

  test('Python imaplib: LOGIN over implicit TLS, typed in upper case with spaces', async () => {
    const typed = alice.password.toUpperCase().replaceAll('-', ' ');
    const r = await imaplib(s.ports.imaps, 'implicit', s.proxyCaFile, alice.login.toUpperCase(), typed);
    assert.equal(r.error, undefined, r.error);
    assert.deepEqual(Buffer.from(r.message_b64!, 'base64'), seeded);
  });

  test('curl: AUTHENTICATE PLAIN over STARTTLS (--ssl-reqd) and imaps:// fetch the message', async () => {
    for (const url of [
      `imap://127.0.0.1:${s.ports.starttls}/INBOX;UID=1`,
      `imaps://127.0.0.1:${s.ports.imaps}/INBOX;UID=1`,
    ]) {
      const { stdout, stderr } = await run(
        'curl',
        ['-sS', '--ssl-reqd', '--cacert', s.proxyCaFile, '-v', '-u', `${alice.login}:${alice.password}`, url],
        { encoding: 'buffer', timeout: 30_000 },
      );
      assert.deepEqual(stdout, seeded, url);
      assert.match(String(stderr), /AUTHENTICATE PLAIN/, 'curl used AUTHENTICATE PLAIN');
    }
  });

  test('imapflow 2.1.2: login, fetch, IDLE sees a message appended by another client', async () => {
    const c = imapflow(s, alice);
    await c.connect();
    try {
      const lock = await c.getMailboxLock('INBOX');
      try {
        const source = await fetchSource(c, '1');
        assert.deepEqual(source, seeded);
        const before = (c.mailbox as { exists: number }).exists;
        const exists = new Promise<number>((resolve) =>
          c.on('exists', (d: { count: number }) => resolve(d.count)),
        );
        const idle = c.idle();
        await s.dovecot.seed(alice.upstreamUser, testMessage('e2e-idle'));
        assert.equal(await withDeadline(exists, 10_000, 'IDLE to report the new message'), before + 1);
        // IDLE lasts until the next command; logout below ends it.
        void idle.catch(() => {});
      } finally {
        lock.release();
      }
    } finally {
      await c.logout();
    }
  });

  test('a 10 MB APPEND and FETCH are byte-exact through the proxy (STARTTLS client leg)', async () => {
    const big = Buffer.concat([
      testMessage('e2e-big').subarray(0, -2),
      Buffer.from(
        randomBytes(7_500_000)
          .toString('base64')
          .replace(/(.{76})/g, '$1\r\n'),
      ),
      Buffer.from('\r\n'),
    ]);
    assert.ok(big.length > 10_000_000);
    const c = imapflow(s, alice, { secure: false });
    await c.connect();
    try {
      const res = await c.append('INBOX', big);
      assert.ok(res !== false && res.uid, 'APPEND returned a UID');
      const lock = await c.getMailboxLock('INBOX');
      try {
        const source = await fetchSource(c, String(res.uid));
        assert.equal(source.length, big.length);
        assert.ok(source.equals(big), 'fetched bytes equal appended bytes');
      } finally {
        lock.release();
      }
    } finally {
      await c.logout();
    }
  });

  test('LOGIN and SELECT pipelined in one write are both answered, in order', async () => {
    const c = await RawImapClient.connect(s.ports.imaps, { tls: true });
    try {
      await c.readLine();
      c.write(`a LOGIN ${alice.login} "${alice.password}"\r\nb SELECT INBOX\r\nc LOGOUT\r\n`);
      const a = await c.readUntil('a ');
      assert.match(a.at(-1)!, /^a OK \[CAPABILITY [^\]]*IMAP4rev1/);
      assert.match(
        a.at(-1)!,
        /\bIDLE\b.*\bMOVE\b|\bMOVE\b.*\bIDLE\b/,
        'the tagged OK carries upstream post-login capabilities',
      );
      const b = await c.readUntil('b ');
      assert.ok(
        b.some((l) => /^\* \d+ EXISTS/.test(l)),
        b.join('\n'),
      );
      assert.match(b.at(-1)!, /^b OK \[READ-WRITE\]/);
      const end = await c.readUntil('c ');
      assert.match(end.at(-1)!, /^c OK/);
    } finally {
      c.close();
    }
  });

  test('the per-account session cap answers NO [LIMIT] and frees the slot at logout', async () => {
    const bob = await s.addAccount('bob', { maxSessions: 1 });
    const first = imapflow(s, bob);
    await first.connect();
    const r = await imaplib(s.ports.imaps, 'implicit', s.proxyCaFile, bob.login, bob.password, 'login', '');
    assert.match(r.error ?? '', /\[LIMIT\]/);
    await first.logout();
    await until(
      () => s.app.pipeline.sessions.count(bob.account.id) === 0,
      5000,
      "bob's session slot to be freed",
    );
    const again = await imaplib(
      s.ports.imaps,
      'implicit',
      s.proxyCaFile,
      bob.login,
      bob.password,
      'login',
      '',
    );
    assert.equal(again.login, 'OK', again.error);
  });

  test('nothing secret ever reached the log', () => {
    const logs = s.logs();
    assert.ok(logs.length > 1000, 'the proxy logged its sessions');
    for (const secret of [alice.password, alice.refreshToken!, alice.accessToken!]) {
      assert.equal(logs.includes(secret), false);
      assert.equal(logs.includes(secret.replaceAll('-', '')), false);
    }
  });
});

async function fetchSource(c: ImapFlow, uid: string): Promise<Buffer> {
  const msg = await c.fetchOne(uid, { source: true }, { uid: true });
  if (msg === false || msg === undefined || msg.source === undefined)
    return assert.fail(`message ${uid} was not fetched`);
  return msg.source;
}
