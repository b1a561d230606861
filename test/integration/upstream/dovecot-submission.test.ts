import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { withDeadline } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot, withDovecotLog } from '../../helpers/dovecot.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { connectSmtp, parseReply, type SmtpClient } from '../../helpers/smtp-client.js';
import { type SmtpSink, startSmtpSink } from '../../helpers/smtp-sink.js';

// Real components: Dovecot 2.3 submission validates tokens at a real oidc-provider and relays
// to a real SMTP server (aiosmtpd) that records every byte it is given.

const USER = 'alice@example.com';
const RCPTS = ['bob@example.org', 'carol@example.net'];
const b64 = (s: string) => Buffer.from(s).toString('base64');
const xoauth2 = (user: string, token: string) => b64(`user=${user}\x01auth=Bearer ${token}\x01\x01`);
const oauthbearer = (user: string, token: string) => b64(`n,a=${user},\x01auth=Bearer ${token}\x01\x01`);

/** A 1 MiB message whose body has lines that are ".", start with "." or "..", long lines and UTF-8. */
function bigMessage(): Buffer {
  const head =
    `From: ${USER}\r\nTo: ${RCPTS.join(', ')}\r\nSubject: dots and bytes\r\n` +
    'Message-ID: <dots@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n' +
    'Content-Transfer-Encoding: 8bit\r\n\r\n';
  const kinds = [
    '.',
    '..',
    '.leading dot',
    '...',
    'plain line',
    'grüße ✓',
    ' .',
    'x'.repeat(998),
    '',
    'y'.repeat(4000),
  ];
  const lines: string[] = [];
  let size = Buffer.byteLength(head);
  for (let i = 0; size < 1024 * 1024; i++) {
    const line = kinds[i % kinds.length]!;
    lines.push(line);
    size += Buffer.byteLength(line) + 2;
  }
  return Buffer.from(`${head}${lines.join('\r\n')}\r\n`);
}

/** Dot-stuffing (RFC 5321 §4.5.2) and the end-of-data marker: what goes on the wire after DATA. */
function onTheWire(message: Buffer): Buffer {
  const text = message.toString('latin1').replace(/(^|\r\n)\./g, '$1..');
  return Buffer.from(`${text}.\r\n`, 'latin1');
}

/** True when `data` is one `Received:` header followed by exactly `original`. */
function isReceivedThen(data: Buffer, original: Buffer): boolean {
  if (data.length < original.length || !data.subarray(data.length - original.length).equals(original))
    return false;
  const prefix = data.subarray(0, data.length - original.length).toString('latin1');
  return /^Received: [^\r\n]*(\r\n[ \t][^\r\n]*)*\r\n$/.test(prefix);
}

describe('test bed helpers: SMTP reply parsing, Dovecot options', () => {
  const wire = Buffer.from('250-localhost\r\n250-AUTH PLAIN XOAUTH2\r\n250 SIZE\r\n220 next');

  test('a multi-line reply is complete only at its last line, at every split', () => {
    for (let cut = 0; cut <= wire.length; cut++) {
      const got = parseReply(wire.subarray(0, cut));
      if (cut < wire.indexOf('250 SIZE\r\n') + 10) assert.equal(got, null, `cut ${cut}`);
      else {
        assert.deepEqual(got?.reply, {
          code: 250,
          lines: ['localhost', 'AUTH PLAIN XOAUTH2', 'SIZE'],
          text: 'localhost\nAUTH PLAIN XOAUTH2\nSIZE',
        });
        assert.equal(got?.rest.toString(), '220 next'.slice(0, cut - (wire.length - 8)));
      }
    }
  });

  test('a bare code, a bad line and a code change inside a reply', () => {
    assert.deepEqual(parseReply(Buffer.from('334\r\n'))?.reply, { code: 334, lines: [''], text: '' });
    assert.throws(() => parseReply(Buffer.from('* OK imap\r\n')), /not an SMTP reply line/);
    assert.throws(() => parseReply(Buffer.from('250-a\r\n251 b\r\n')), /code changed from 250 to 251/);
  });

  test('startDovecot refuses a relay port that is not a port', async () => {
    await assert.rejects(startDovecot({ relayPort: 70000 }), /relayPort must be a TCP port number/);
  });
});

describe('Dovecot submission + POP3 as an upstream, with a recording sink', () => {
  let op: TestOP;
  let sink: SmtpSink;
  let dv: Dovecot;
  let token: string;
  const clients: SmtpClient[] = [];

  before(async () => {
    [op, sink] = await Promise.all([startOP(), startSmtpSink()]);
    const url = new URL(op.introspection.url);
    url.username = op.introspection.id;
    url.password = op.introspection.secret;
    dv = await startDovecot({ introspectionUrl: url.toString(), relayPort: sink.port });
    token = (await op.mintGrant(USER)).access_token;
  });
  after(async () => {
    for (const c of clients) c.close();
    await Promise.all([dv?.stop(), sink?.stop(), op?.close()]);
  });

  const logged = (fn: () => Promise<void>) => withDovecotLog(() => dv, fn);

  async function submission(tls: 'none' | 'implicit'): Promise<SmtpClient> {
    const port = tls === 'none' ? dv.submissionPort : dv.submissionsPort;
    const c = await connectSmtp({ host: dv.host, port, tls, ca: dv.caFile, servername: 'localhost' });
    clients.push(c);
    assert.equal(c.greeting.code, 220, c.greeting.text);
    return c;
  }

  async function expect(c: SmtpClient, line: string, code: number): Promise<void> {
    const r = await c.command(line);
    assert.equal(r.code, code, `${line.split(' ')[0]} → ${r.code} ${r.text}`);
  }

  test(
    'STARTTLS, AUTH XOAUTH2, then a 1 MiB dot-stuffed message arrives byte for byte',
    logged(async () => {
      const c = await submission('none');
      assert.equal((await c.ehlo('client.example')).code, 250);
      await c.startTls();
      const ehlo = await c.ehlo('client.example');
      assert.equal(ehlo.code, 250);
      assert.ok(
        ehlo.lines.some((l) => /^AUTH( \S+)* XOAUTH2( \S+)* OAUTHBEARER\b/.test(l)),
        `EHLO after STARTTLS lacks XOAUTH2/OAUTHBEARER: ${ehlo.text}`,
      );
      await expect(c, `AUTH XOAUTH2 ${xoauth2(USER, token)}`, 235);
      await expect(c, `MAIL FROM:<${USER}> BODY=8BITMIME`, 250);
      for (const r of RCPTS) await expect(c, `RCPT TO:<${r}>`, 250);
      await expect(c, 'DATA', 354);
      const message = bigMessage();
      const wire = onTheWire(message);
      assert.ok(wire.length > message.length, 'the message needs dot-stuffing');
      c.send(wire);
      const done = await c.reply(30_000);
      assert.equal(done.code, 250, done.text);

      const [got] = await sink.waitFor(1, 5_000);
      assert.ok(got);
      assert.equal(got.mailFrom, USER);
      assert.deepEqual(got.rcptTos, RCPTS);
      assert.ok(isReceivedThen(got.data, message), `sink data differs (${got.data.length} bytes)`);
      // The comparison notices one changed byte, and bytes left dot-stuffed.
      const mutated = Buffer.from(message);
      const mid = mutated.length >> 1;
      mutated[mid] = mutated[mid]! ^ 0x01;
      assert.equal(isReceivedThen(got.data, mutated), false);
      assert.equal(isReceivedThen(got.data, wire.subarray(0, wire.length - 3)), false);
      await expect(c, 'QUIT', 221);
      await c.closed();
    }),
  );

  test(
    'a bad token: 334 with the JSON error, an empty line, then 535 5.7.8',
    logged(async () => {
      const c = await submission('implicit');
      await c.ehlo('client.example');
      const r = await c.command(`AUTH XOAUTH2 ${xoauth2(USER, 'not-a-valid-token')}`);
      assert.equal(r.code, 334, r.text);
      const json = JSON.parse(Buffer.from(r.text, 'base64').toString()) as Record<string, unknown>;
      assert.equal(json['status'], '401');
      const fail = await c.command('', 5_000);
      assert.equal(fail.code, 535, fail.text);
      assert.match(fail.text, /^5\.7\.8 /);
    }),
  );

  test(
    'implicit TLS: AUTH OAUTHBEARER and a small message',
    logged(async () => {
      const before = sink.messages().length;
      const c = await submission('implicit');
      const ehlo = await c.ehlo('client.example');
      assert.ok(ehlo.lines.includes('AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER'), ehlo.text);
      await expect(c, `AUTH OAUTHBEARER ${oauthbearer(USER, token)}`, 235);
      await expect(c, `MAIL FROM:<${USER}>`, 250);
      await expect(c, `RCPT TO:<${RCPTS[0]}>`, 250);
      await expect(c, 'DATA', 354);
      const message = Buffer.from('Subject: small\r\n\r\nover implicit TLS\r\n');
      c.send(onTheWire(message));
      assert.equal((await c.reply()).code, 250);
      const got = (await sink.waitFor(before + 1, 5_000))[before];
      assert.ok(got && isReceivedThen(got.data, message));
      assert.deepEqual(got.rcptTos, [RCPTS[0]]);
      await assert.rejects(
        sink.waitFor(before + 2, 100),
        /SMTP sink got \d+ of \d+ message\(s\) within 100 ms/,
      );
    }),
  );

  test(
    'POP3 over implicit TLS greets +OK and accepts AUTH XOAUTH2',
    logged(async () => {
      const s = tlsConnect({
        host: dv.host,
        port: dv.pop3sPort,
        ca: readFileSync(dv.caFile),
        servername: 'localhost',
      });
      s.on('error', () => {});
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString();
      });
      const line = () =>
        withDeadline(
          (async () => {
            while (!buf.includes('\r\n')) await new Promise((r) => s.once('data', r));
            const at = buf.indexOf('\r\n');
            const l = buf.slice(0, at);
            buf = buf.slice(at + 2);
            return l;
          })(),
          5_000,
          'a POP3 line',
        );
      try {
        assert.match(await line(), /^\+OK /);
        s.write(`AUTH XOAUTH2 ${xoauth2(USER, token)}\r\n`);
        assert.match(await line(), /^\+OK /);
      } finally {
        s.destroy();
      }
    }),
  );
});
