import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { SAFE_CAPABILITIES } from '../../../src/protocols/pop3/capabilities.js';
import { until } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { bodyLines, connectPop3, type Pop3Client, unstuff } from '../../helpers/pop3-client.js';
import {
  assertNoSecretsLogged,
  loginCount,
  type Stack,
  startStack,
  type TestAccount,
  upstreamAuthCount,
  withCredentials,
} from '../../helpers/stack.js';

// Real components only: a scripted POP3 client → proxy → Dovecot POP3 (tokens introspected at
// oidc-provider); mail is seeded into Dovecot with doveadm.

const SAFE = new Set<string>(SAFE_CAPABILITIES);
const LARGE_MS = 30_000;
const keyword = (line: string) => line.split(' ')[0]!.toUpperCase();

type Listener = 'pop3' | 'pop3s';

/** Connects to a proxy listener and, on the STLS one, upgrades; returns the client and its CAPA over TLS. */
async function open(s: Stack, listener: Listener): Promise<{ c: Pop3Client; capa: string[] }> {
  const c = await connectPop3({
    host: '127.0.0.1',
    port: s.ports[listener],
    tls: listener === 'pop3s' ? 'implicit' : 'none',
    ca: s.proxyCaFile,
  });
  assert.match(c.greeting, /^\+OK /);
  if (listener === 'pop3') await c.stls();
  return { c, capa: await c.capa() };
}

async function userPass(c: Pop3Client, login: string, password: string): Promise<void> {
  assert.match(await c.command(`USER ${login}`), /^\+OK /);
  assert.equal(await c.command(`PASS ${password}`, 15_000), '+OK Logged in');
}

async function authPlain(c: Pop3Client, login: string, password: string): Promise<void> {
  const ir = Buffer.from(`\0${login}\0${password}`).toString('base64');
  assert.equal(await c.command(`AUTH PLAIN ${ir}`, 15_000), '+OK Logged in');
}

async function authLogin(c: Pop3Client, login: string, password: string): Promise<void> {
  assert.match(await c.command('AUTH LOGIN'), /^\+ /);
  assert.match(await c.command(Buffer.from(login).toString('base64')), /^\+ /);
  assert.equal(await c.command(Buffer.from(password).toString('base64'), 15_000), '+OK Logged in');
}

/** A message whose Message-ID carries `marker`, CRLF line ends. */
function message(marker: string, body: string): Buffer {
  return Buffer.from(
    `From: bob@example.org\r\nTo: alice@example.com\r\nSubject: ${marker}\r\n` +
      `Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${marker}@example.com>\r\n\r\n${body}`,
    'latin1',
  );
}

/** RETR n: the unstuffed message must be `seeded` exactly; returns the wire bytes. */
async function retrEquals(c: Pop3Client, n: number, seeded: Buffer): Promise<Buffer> {
  const r = await c.multiline(`RETR ${n}`, LARGE_MS);
  assert.match(r.status, /^\+OK/);
  const got = unstuff(r.wire);
  assert.equal(got.length, seeded.length, 'RETR gives the seeded size');
  assert.ok(got.equals(seeded), 'RETR gives the seeded message byte for byte');
  return r.wire;
}

async function quit(c: Pop3Client): Promise<void> {
  assert.match(await c.command('QUIT', 10_000), /^\+OK/);
  await c.closed(10_000);
}

/** Dovecot's own CAPA over TLS: what the proxy may advertise is a subset of it. */
async function dovecotCapa(d: Dovecot): Promise<string[]> {
  const c = await connectPop3({ host: d.host, port: d.pop3sPort, tls: 'implicit', ca: d.caFile });
  try {
    return await c.capa();
  } finally {
    c.close();
  }
}

describe('POP3 through the proxy (real OP, Dovecot POP3)', () => {
  let s: Stack;
  let alice: TestAccount;
  let logins = 0;

  before(async () => {
    s = await startStack();
    alice = await s.addAccount('alice');
  });
  after(async () => {
    await s?.close();
  });

  test('CAPA: STLS and no login before TLS; after STLS and on implicit TLS USER, SASL PLAIN LOGIN and exactly the TOP/UIDL/PIPELINING Dovecot has', async () => {
    const upstream = await dovecotCapa(s.dovecot);
    assert.ok(
      upstream.some((l) => /^SASL .*XOAUTH2/.test(l)),
      'Dovecot offers XOAUTH2 (never passed on)',
    );
    const shared = upstream.filter((l) => SAFE.has(keyword(l))).map(keyword);
    for (const cap of SAFE_CAPABILITIES) assert.ok(shared.includes(cap), `Dovecot advertises ${cap}`);
    const tail = ['RESP-CODES', 'AUTH-RESP-CODE', ...shared].sort();

    // What the upstream has is learned in the background at start; until then none is promised.
    const c = await connectPop3({ host: '127.0.0.1', port: s.ports.pop3, tls: 'none', ca: s.proxyCaFile });
    try {
      let clear: string[] = [];
      await until(
        async () => {
          clear = await c.capa();
          return clear.includes('UIDL');
        },
        10_000,
        "the upstream's capabilities in CAPA",
        100,
      );
      assert.deepEqual([...clear].sort(), ['STLS', ...tail].sort(), 'cleartext CAPA');
      await c.stls();
      assert.deepEqual(
        [...(await c.capa())].sort(),
        ['SASL PLAIN LOGIN', 'USER', ...tail].sort(),
        'after STLS',
      );
    } finally {
      c.close();
    }
    const { c: implicit, capa } = await open(s, 'pop3s');
    implicit.close();
    assert.deepEqual([...capa].sort(), ['SASL PLAIN LOGIN', 'USER', ...tail].sort(), 'implicit TLS');
  });

  test('USER/PASS after STLS: STAT, LIST, UIDL, RETR of a 1 MiB message with "." and ".x" lines byte-stuffed on the wire and equal to the seed; DELE + QUIT removes it upstream', async () => {
    const a = await s.addAccount('big');
    const lines = randomBytes(800_000)
      .toString('base64')
      .match(/.{1,76}/g)!;
    lines.splice(10, 0, '.');
    lines.splice(500, 0, '.x');
    lines.splice(9000, 0, '..already-two-dots');
    lines.push('.');
    const seeded = message('big', `${lines.join('\r\n')}\r\n`);
    assert.ok(seeded.length >= 1024 * 1024, `${seeded.length} bytes`);
    await s.dovecot.seed(a.upstreamUser, seeded);

    const { c } = await open(s, 'pop3');
    try {
      await userPass(c, a.login, a.password);
      logins++;
      assert.equal(await c.command('STAT'), `+OK 1 ${seeded.length}`);
      assert.equal(await c.command('LIST 1'), `+OK 1 ${seeded.length}`);
      assert.deepEqual(bodyLines(await c.multiline('LIST')), [`1 ${seeded.length}`]);
      const uidl = await c.command('UIDL 1');
      assert.match(uidl, /^\+OK 1 \S+$/);
      assert.deepEqual(bodyLines(await c.multiline('UIDL')), [uidl.slice(4)]);
      const wire = await retrEquals(c, 1, seeded);
      const text = wire.toString('latin1');
      assert.ok(text.includes('\r\n..\r\n'), 'a "." line travels as ".."');
      assert.ok(text.includes('\r\n..x\r\n'), 'a ".x" line travels as "..x"');
      assert.ok(text.includes('\r\n...already-two-dots\r\n'), 'a ".." line travels as "..."');
      assert.ok(text.endsWith('\r\n..\r\n'), 'the last "." line stays apart from the terminator');
      assert.match(await c.command('DELE 1'), /^\+OK/);
      await quit(c);
    } finally {
      c.close();
    }
    const { c: again } = await open(s, 'pop3s');
    try {
      await userPass(again, a.login, a.password);
      logins++;
      assert.equal(await again.command('STAT'), '+OK 0 0', 'the message is gone upstream');
      await quit(again);
    } finally {
      again.close();
    }
  });

  test('AUTH PLAIN on implicit TLS, with the initial response and after the + prompt', async () => {
    const seeded = message('plain', 'Read with AUTH PLAIN.\r\n.x\r\n');
    await s.dovecot.seed(alice.upstreamUser, seeded);
    const { c } = await open(s, 'pop3s');
    try {
      await authPlain(c, alice.login, alice.password);
      logins++;
      assert.match(await c.command('STAT'), /^\+OK 1 /);
      await retrEquals(c, 1, seeded);
      await quit(c);
    } finally {
      c.close();
    }
    const { c: prompted } = await open(s, 'pop3s');
    try {
      assert.equal(await prompted.command('AUTH PLAIN'), '+ ');
      const response = Buffer.from(`\0${alice.login}\0${alice.password}`).toString('base64');
      assert.equal(await prompted.command(response, 15_000), '+OK Logged in');
      logins++;
      await retrEquals(prompted, 1, seeded);
      await quit(prompted);
    } finally {
      prompted.close();
    }
  });

  test('AUTH LOGIN after STLS', async () => {
    const { c } = await open(s, 'pop3');
    try {
      await authLogin(c, alice.login, alice.password);
      logins++;
      assert.match(await c.command('STAT'), /^\+OK \d+ \d+$/);
      await quit(c);
    } finally {
      c.close();
    }
  });

  test('every login is counted as a POP3 success, each upstream authentication too, and nothing secret is logged', async () => {
    assert.ok(logins >= 5);
    assert.equal(await loginCount(s, 'pop3', 'success'), logins);
    assert.equal(await upstreamAuthCount(s, 'pop3', 'success', 'xoauth2'), logins);
    const logs = s.logs();
    assert.ok(logs.length > 0);
    const g = await s.app.store.getGrant(alice.account.id);
    assertNoSecretsLogged(logs, [...s.secrets, g?.accessToken ?? '', g?.refreshToken ?? '']);
  });
});

describe('POP3 upstream modes: STLS or implicit TLS, XOAUTH2 or OAUTHBEARER', () => {
  let op: TestOP;
  let dovecot: Dovecot;

  before(async () => {
    op = await startOP();
    dovecot = await startDovecot({
      introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
    });
  });
  after(async () => {
    await dovecot?.stop();
    await op?.close();
  });

  const modes = [
    { upstreamTls: 'starttls', mechanism: 'xoauth2' },
    { upstreamTls: 'implicit', mechanism: 'oauthbearer' },
    { upstreamTls: 'starttls', mechanism: 'oauthbearer' },
  ] as const;
  for (const { upstreamTls, mechanism } of modes) {
    test(`upstream ${upstreamTls} with ${mechanism.toUpperCase()}: login, RETR gives the seed back`, async () => {
      const s = await startStack({ op, dovecot, upstreamTls, mechanism });
      try {
        const a = await s.addAccount(`m-${upstreamTls}-${mechanism}`);
        const seeded = message(`mode-${upstreamTls}-${mechanism}`, 'Fetched.\r\n..\r\n');
        await dovecot.seed(a.upstreamUser, seeded);
        const { c } = await open(s, 'pop3s');
        try {
          await userPass(c, a.login, a.password);
          await retrEquals(c, 1, seeded);
          await quit(c);
        } finally {
          c.close();
        }
        assert.equal(
          await upstreamAuthCount(s, 'pop3', 'success', mechanism),
          1,
          `upstream authenticated with ${mechanism}`,
        );
        assert.equal(await loginCount(s, 'pop3', 'success'), 1);
      } finally {
        await s.close();
      }
    });
  }
});
