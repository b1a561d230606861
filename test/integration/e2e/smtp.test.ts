import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { SAFE_EXTENSIONS } from '../../../src/protocols/smtp/extensions.js';
import { until } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import { type SinkMessage, type SmtpSink, startSmtpSink } from '../../helpers/smtp-sink.js';
import {
  assertNoSecretsLogged,
  loginCount,
  type Stack,
  startStack,
  type TestAccount,
  upstreamAuthCount,
  withCredentials,
} from '../../helpers/stack.js';

// Real components only: legacy SMTP client → proxy → Dovecot submission (tokens introspected at
// oidc-provider) → the recording sink Dovecot relays to.

/** The extensions a submission front door may pass on from its upstream (anything else is withheld). */
const SAFE = new Set<string>(SAFE_EXTENSIONS);
const LARGE_MS = 30_000;
const keyword = (line: string) => line.split(' ')[0]!.toUpperCase();

type Listener = 'submission' | 'submissions';

/** Connects to a proxy listener, upgrades the STARTTLS one, and says EHLO over TLS. */
async function open(s: Stack, listener: Listener): Promise<{ c: SmtpClient; ehlo: string[] }> {
  const c = await connectSmtp({
    host: '127.0.0.1',
    port: s.ports[listener],
    tls: listener === 'submissions' ? 'implicit' : 'none',
    ca: s.proxyCaFile,
  });
  assert.equal(c.greeting.code, 220);
  if (listener === 'submission') {
    const clear = await c.ehlo('scanner.example.net');
    assert.equal(clear.code, 250);
    assert.ok(clear.lines.includes('STARTTLS'), clear.text);
    await c.startTls();
  }
  const r = await c.ehlo('scanner.example.net');
  assert.equal(r.code, 250, r.text);
  return { c, ehlo: r.lines.slice(1) };
}

async function authPlain(c: SmtpClient, login: string, password: string): Promise<void> {
  const ir = Buffer.from(`\0${login}\0${password}`).toString('base64');
  const r = await c.command(`AUTH PLAIN ${ir}`, 15_000);
  assert.equal(`${r.code} ${r.text.slice(0, 5)}`, '235 2.7.0', r.text);
}

async function authLogin(c: SmtpClient, login: string, password: string): Promise<void> {
  assert.equal((await c.command('AUTH LOGIN')).code, 334);
  assert.equal((await c.command(Buffer.from(login).toString('base64'))).code, 334);
  const r = await c.command(Buffer.from(password).toString('base64'), 15_000);
  assert.equal(`${r.code} ${r.text.slice(0, 5)}`, '235 2.7.0', r.text);
}

/** RFC 5321 §4.5.2: a line that starts with "." gets one more. */
function dotStuff(data: Buffer): Buffer {
  const text = data.toString('latin1');
  return Buffer.from(text.replace(/(^|\r\n)\./g, '$1..'), 'latin1');
}

/** MAIL, RCPT, DATA with the dot-stuffed message; returns the final reply's code. */
async function sendData(c: SmtpClient, from: string, to: string[], message: Buffer): Promise<number> {
  assert.equal((await c.command(`MAIL FROM:<${from}>`)).code, 250);
  for (const rcpt of to) assert.equal((await c.command(`RCPT TO:<${rcpt}>`)).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(Buffer.concat([dotStuff(message), Buffer.from('.\r\n')]));
  return (await c.reply(LARGE_MS)).code;
}

/** A message whose Message-ID carries `marker`, so it can be found at the sink. */
function message(marker: string, body: string, extraHeaders = ''): Buffer {
  return Buffer.from(
    `From: scanner@example.com\r\nTo: alice@example.com\r\nSubject: ${marker}\r\n` +
      `Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${marker}@example.com>\r\n${extraHeaders}\r\n${body}`,
    'latin1',
  );
}

/** Waits for the sink message with `marker` and checks it is Dovecot's one Received: header plus `sent`, byte for byte. */
async function delivered(sink: SmtpSink, marker: string, sent: Buffer): Promise<SinkMessage> {
  const find = () => sink.messages().find((m) => m.data.includes(`<${marker}@example.com>`));
  await until(() => find() !== undefined, LARGE_MS, `message ${marker} at the sink`, 50);
  const got = find()!;
  assert.ok(got.data.length > sent.length, 'the relay adds its trace header');
  const prefix = got.data.subarray(0, got.data.length - sent.length).toString('latin1');
  assert.ok(
    got.data.subarray(got.data.length - sent.length).equals(sent),
    'the message arrived byte for byte',
  );
  assert.match(
    prefix,
    /^Received: [^\r\n]*\r\n([ \t][^\r\n]*\r\n)*$/,
    'exactly one Received: header before it',
  );
  return got;
}

/** Base64 in 76-character lines, as MIME writers produce it. */
function base64Lines(data: Buffer): string {
  return (data.toString('base64').match(/.{1,76}/g) ?? []).join('\r\n');
}

/** Dovecot's own EHLO keywords over TLS: what the proxy may advertise is a subset of these. */
async function dovecotEhlo(d: Dovecot): Promise<string[]> {
  const c = await connectSmtp({ host: d.host, port: d.submissionsPort, tls: 'implicit', ca: d.caFile });
  try {
    return (await c.ehlo('probe.example.net')).lines.slice(1);
  } finally {
    c.close();
  }
}

describe('SMTP submission through the proxy (real OP, Dovecot submission, recording sink)', () => {
  let s: Stack;
  let alice: TestAccount;
  let sink: SmtpSink;
  const successBefore = { logins: 0 };
  let logins = 0;

  before(async () => {
    s = await startStack();
    sink = s.sink!;
    alice = await s.addAccount('alice');
    successBefore.logins = await loginCount(s, 'smtp', 'success');
  });
  after(async () => {
    await s?.close();
  });

  test('after STARTTLS and on implicit TLS, EHLO offers AUTH PLAIN LOGIN and exactly the safe extensions Dovecot has', async () => {
    const upstream = await dovecotEhlo(s.dovecot);
    assert.ok(
      upstream.some((l) => keyword(l) === 'BURL'),
      'Dovecot itself has BURL (unsafe to pass on)',
    );
    // HELP is the front door's own pre-auth command.
    const expected = ['AUTH PLAIN LOGIN', 'HELP', ...upstream.filter((l) => SAFE.has(keyword(l)))].sort();
    for (const ext of ['8BITMIME', 'CHUNKING', 'ENHANCEDSTATUSCODES', 'PIPELINING', 'SIZE']) {
      assert.ok(
        expected.some((l) => keyword(l) === ext),
        `Dovecot advertises ${ext}`,
      );
    }
    for (const listener of ['submission', 'submissions'] as const) {
      let got: string[] = [];
      // What the upstream has is learned in the background at start; until then only the basics are offered.
      await until(
        async () => {
          const { c, ehlo } = await open(s, listener);
          c.close();
          got = ehlo;
          return ehlo.some((l) => keyword(l) === 'CHUNKING');
        },
        10_000,
        `${listener}: the upstream's extensions in EHLO`,
        100,
      );
      assert.deepEqual([...got].sort(), expected, `${listener} EHLO`);
      assert.ok(!got.some((l) => /XOAUTH2|OAUTHBEARER|BURL|STARTTLS/i.test(l)), got.join(' | '));
    }
  });

  test('AUTH PLAIN on STARTTLS: a 1 MiB message with "." and ".x" lines arrives byte for byte, envelope intact', async () => {
    const { c } = await open(s, 'submission');
    try {
      await authPlain(c, alice.login, alice.password);
      logins++;
      const filler = randomBytes(800_000).toString('base64');
      const lines = filler.match(/.{1,76}/g)!;
      lines.splice(10, 0, '.');
      lines.splice(500, 0, '.x');
      lines.splice(9000, 0, '..already-two-dots');
      lines.push('.');
      const msg = message('big-plain', `${lines.join('\r\n')}\r\n`);
      assert.ok(msg.length >= 1024 * 1024, `${msg.length} bytes`);
      const rcpts = ['bob@example.org', 'carol@example.net'];
      assert.equal(await sendData(c, 'alice@example.com', rcpts, msg), 250);
      const got = await delivered(sink, 'big-plain', msg);
      assert.equal(got.mailFrom, 'alice@example.com');
      assert.deepEqual(got.rcptTos, rcpts);
      assert.equal((await c.command('QUIT')).code, 221);
    } finally {
      c.close();
    }
  });

  test('AUTH LOGIN on implicit TLS; two messages on one connection', async () => {
    const { c } = await open(s, 'submissions');
    try {
      await authLogin(c, alice.login, alice.password);
      logins++;
      const one = message('two-one', 'First of two.\r\n');
      const two = message('two-two', 'Second of two.\r\n.x\r\n');
      assert.equal(await sendData(c, 'alice@example.com', ['bob@example.org'], one), 250);
      assert.equal(await sendData(c, 'alice@example.com', ['dave@example.org'], two), 250);
      assert.deepEqual((await delivered(sink, 'two-one', one)).rcptTos, ['bob@example.org']);
      assert.deepEqual((await delivered(sink, 'two-two', two)).rcptTos, ['dave@example.org']);
    } finally {
      c.close();
    }
  });

  test('BDAT (CHUNKING) passes through: two chunks, no dot-stuffing, delivered exactly', async () => {
    const { c } = await open(s, 'submissions');
    try {
      await authPlain(c, alice.login, alice.password);
      logins++;
      const msg = message('bdat', `.leading dot stays single in BDAT\r\n${'y'.repeat(70)}\r\n`.repeat(2000));
      const cut = 40_001;
      assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<bob@example.org>')).code, 250);
      c.send(Buffer.concat([Buffer.from(`BDAT ${cut}\r\n`), msg.subarray(0, cut)]));
      assert.equal((await c.reply(LARGE_MS)).code, 250);
      c.send(Buffer.concat([Buffer.from(`BDAT ${msg.length - cut} LAST\r\n`), msg.subarray(cut)]));
      assert.equal((await c.reply(LARGE_MS)).code, 250);
      await delivered(sink, 'bdat', msg);
    } finally {
      c.close();
    }
  });

  test('a scanner-style message with a ~2 MB base64 PDF attachment arrives intact', async () => {
    const pdf = Buffer.concat([Buffer.from('%PDF-1.4\n'), randomBytes(1_500_000), Buffer.from('\n%%EOF\n')]);
    const boundary = '----=_scan_0001';
    const body =
      `This is a multi-part message in MIME format.\r\n--${boundary}\r\n` +
      'Content-Type: text/plain; charset=us-ascii\r\n\r\nScanned document attached.\r\n' +
      `--${boundary}\r\nContent-Type: application/pdf; name="scan0001.pdf"\r\n` +
      'Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename="scan0001.pdf"\r\n\r\n' +
      `${base64Lines(pdf)}\r\n--${boundary}--\r\n`;
    const msg = message(
      'scan',
      body,
      `MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="${boundary}"\r\n`,
    );
    assert.ok(msg.length > 2_000_000, `${msg.length} bytes`);
    const { c } = await open(s, 'submission');
    try {
      await authLogin(c, alice.login, alice.password);
      logins++;
      assert.equal(await sendData(c, 'scanner@example.com', ['alice@example.com'], msg), 250);
    } finally {
      c.close();
    }
    const got = await delivered(sink, 'scan', msg);
    const b64 = got.data
      .toString('latin1')
      .split('filename="scan0001.pdf"\r\n\r\n')[1]!
      .split(`\r\n--${boundary}--`)[0]!;
    assert.ok(
      Buffer.from(b64.replace(/\r\n/g, ''), 'base64').equals(pdf),
      'the attachment decodes to the same PDF',
    );
  });

  test('every login is counted as an SMTP success, each upstream authentication too, and nothing secret is logged', async () => {
    assert.ok(logins >= 4);
    assert.equal((await loginCount(s, 'smtp', 'success')) - successBefore.logins, logins);
    assert.equal(await upstreamAuthCount(s, 'smtp', 'success', 'xoauth2'), logins);
    const logs = s.logs();
    assert.ok(logs.length > 0);
    const g = await s.app.store.getGrant(alice.account.id);
    assertNoSecretsLogged(logs, [...s.secrets, g?.accessToken ?? '', g?.refreshToken ?? '']);
  });
});

describe('SMTP upstream modes: STARTTLS or implicit TLS, XOAUTH2 or OAUTHBEARER', () => {
  let op: TestOP;
  let sink: SmtpSink;
  let dovecot: Dovecot;

  before(async () => {
    [op, sink] = await Promise.all([startOP(), startSmtpSink()]);
    dovecot = await startDovecot({
      introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
      relayPort: sink.port,
    });
  });
  after(async () => {
    await dovecot?.stop();
    await Promise.all([sink?.stop(), op?.close()]);
  });

  const modes = [
    { upstreamTls: 'starttls', mechanism: 'xoauth2' },
    { upstreamTls: 'implicit', mechanism: 'oauthbearer' },
    { upstreamTls: 'starttls', mechanism: 'oauthbearer' },
  ] as const;
  for (const { upstreamTls, mechanism } of modes) {
    test(`upstream ${upstreamTls} with ${mechanism.toUpperCase()}: login, a message is relayed`, async () => {
      const s = await startStack({ op, dovecot, upstreamTls, mechanism });
      try {
        assert.equal(s.sink, undefined, 'a Dovecot passed in brings no sink of the stack');
        const a = await s.addAccount(`m-${upstreamTls}-${mechanism}`);
        const marker = `mode-${upstreamTls}-${mechanism}`;
        const msg = message(marker, 'Relayed.\r\n..\r\n');
        const { c } = await open(s, 'submissions');
        try {
          await authPlain(c, a.login, a.password);
          assert.equal(await sendData(c, 'alice@example.com', ['bob@example.org'], msg), 250);
        } finally {
          c.close();
        }
        await delivered(sink, marker, msg);
        assert.equal(
          await upstreamAuthCount(s, 'smtp', 'success', mechanism),
          1,
          `upstream authenticated with ${mechanism}`,
        );
        assert.equal(await loginCount(s, 'smtp', 'success'), 1);
      } finally {
        await s.close();
      }
    });
  }
});
