import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, beforeEach, describe, test } from 'node:test';
import { createLogger } from '../../src/log.js';
import { duplexPair } from '../../src/net/duplex-pair.js';
import {
  runTransactions,
  type TransactionOptions,
  transactionExtensions,
} from '../../src/protocols/smtp/transaction.js';
import { execClient } from '../helpers/clients/exec.js';
import { until, withDeadline } from '../helpers/deadline.js';
import { RawImapClient } from '../helpers/imap-client.js';
import {
  GREETING,
  NAME,
  RecordingSink,
  runOnPair,
  sessionOptions,
  transactionServer,
} from '../helpers/smtp-transaction.js';
import { assertSameEverySplit, converse, cutAt } from '../integration/frontdoor/harness.js';

const crlf = (lines: readonly string[]) => lines.map((l) => `${l}\r\n`).join('');
const replies = (transcript: string) =>
  transcript === '' ? [] : transcript.replace(/\r\n$/, '').split('\r\n');
const EHLO_REPLY = [
  `250-${NAME} Hello client.example`,
  '250-PIPELINING',
  '250-8BITMIME',
  '250-SIZE 100000',
  '250-ENHANCEDSTATUSCODES',
  '250 CHUNKING',
];
const BYE = `221 2.0.0 ${NAME} closing connection`;
const DELIVERED = '250 2.0.0 Delivered';
const START_DATA = '354 Start mail input; end with <CRLF>.<CRLF>';

/** A loopback server running the session with a fresh RecordingSink per test (set `sink`/`over`). */
function harness(): {
  readonly port: number;
  sink: RecordingSink;
  over: Partial<TransactionOptions>;
  /** Sends `wire` whole (or in the given pieces) and returns the replies up to the close. */
  talk: (wire: string | Buffer | Buffer[]) => Promise<string[]>;
  /** Until every session this server started has ended. */
  settled: () => Promise<void>;
} {
  let server: Awaited<ReturnType<typeof transactionServer>>;
  const h = {
    sink: new RecordingSink(),
    over: {} as Partial<TransactionOptions>,
    get port() {
      return server.port;
    },
    talk: async (wire: string | Buffer | Buffer[]) => {
      const pieces = Array.isArray(wire) ? wire : [Buffer.from(wire)];
      return replies(await converse(server.port, GREETING, pieces));
    },
    settled: () =>
      withDeadline(
        Promise.all(server.sessions).then(() => {}),
        5000,
        'every session to end',
      ),
  };
  before(async () => {
    server = await transactionServer(() => sessionOptions(h.sink, h.over));
  });
  beforeEach(() => {
    h.sink = new RecordingSink();
    h.over = {};
  });
  after(() => server.close());
  return h;
}

test('EHLO keywords: exactly the extensions the session implements', () => {
  assert.deepEqual(transactionExtensions(35_000_000), [
    'PIPELINING',
    '8BITMIME',
    'SIZE 35000000',
    'ENHANCEDSTATUSCODES',
    'CHUNKING',
  ]);
});

describe('SMTP transaction session on a loopback socket', () => {
  const h = harness();

  test('a whole conversation gives the same replies and messages whole, byte by byte and split at every offset', async () => {
    const sink = new RecordingSink();
    h.sink = sink;
    const wire = Buffer.from(
      crlf([
        'EHLO client.example',
        'MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME',
        'RCPT TO:<b@example.com>',
        'RCPT TO:<"c d"@example.com>',
        'DATA',
      ]) +
        // Dot-stuffed lines, a bare LF "." and ".\r" that are not the end, then the end marker.
        'Subject: t\r\n\r\n..stuffed\r\nx\n.\nnot end\r\n.\rx\r\n\r\n.\r\n' +
        // The transaction is over: this BDAT's 12 bytes are read and dropped, QUIT inside is not a command.
        'BDAT 12\r\nQUIT\r\n.\r\nABC' +
        crlf(['MAIL FROM:<>', 'RCPT TO:<postmaster>', 'BDAT 5']) +
        'hello' +
        crlf(['BDAT 0 LAST', 'NOOP', 'RSET', 'QUIT']),
    );
    const transcript = crlf([
      ...EHLO_REPLY,
      '250 2.1.0 Sender OK',
      '250 2.1.5 Recipient OK',
      '250 2.1.5 Recipient OK',
      START_DATA,
      DELIVERED,
      '503 5.5.1 No valid sender and recipients',
      '250 2.1.0 Sender OK',
      '250 2.1.5 Recipient OK',
      '250 2.0.0 5 octets received',
      DELIVERED,
      '250 2.0.0 OK',
      '250 2.0.0 OK',
      BYE,
    ]);
    await assertSameEverySplit(h.port, GREETING, wire, transcript);
    await h.settled();
    const runs = wire.length + 1;
    assert.equal(sink.delivered.length, 2 * runs, 'two messages per conversation');
    for (let i = 0; i < sink.delivered.length; i += 2) {
      const [first, second] = [sink.delivered[i], sink.delivered[i + 1]];
      assert.equal(
        first?.bytes.toString('latin1'),
        'Subject: t\r\n\r\n.stuffed\r\nx\n.\nnot end\r\n\rx\r\n\r\n',
      );
      assert.deepEqual(first?.envelope, {
        from: 'a@example.com',
        recipients: ['b@example.com', '"c d"@example.com'],
        body: '8BITMIME',
      });
      assert.equal(second?.bytes.toString('latin1'), 'hello');
      assert.deepEqual(second?.envelope, { from: '', recipients: ['postmaster'], body: '7BIT' });
    }
    assert.equal(sink.reserves, 2 * runs);
    assert.equal(sink.releases, 2 * runs, 'every reservation released once');
    assert.deepEqual(sink.violations, []);
  });

  test('Python smtplib sends several messages on one connection, byte-exact after dot-unstuffing', async () => {
    h.over = { maxMessageBytes: 50_000 };
    const dir = mkdtempSync(join(tmpdir(), 'iop-tx-'));
    try {
      const first = Buffer.concat([
        Buffer.from('From: a@example.com\r\nSubject: one\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n'),
        Buffer.from('8bit: caf\xc3\xa9\r\n\x00nul and \x7f\r\nlast line\r\n', 'latin1'),
      ]);
      const second = Buffer.from(`Subject: two\r\n\r\n${'y'.repeat(998)}\r\n`);
      writeFileSync(join(dir, 'first.eml'), first);
      writeFileSync(join(dir, 'second.eml'), second);
      const script = [
        'import smtplib, sys, json',
        'port, d = int(sys.argv[1]), sys.argv[2]',
        "read = lambda n: open(d + '/' + n, 'rb').read()",
        "s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example', timeout=20)",
        's.ehlo()',
        "feats = {k: s.has_extn(k) for k in ['pipelining', 'chunking', '8bitmime', 'enhancedstatuscodes']}",
        "feats['size'] = s.esmtp_features.get('size')",
        "s.sendmail('alice@example.com', ['bob@example.com', 'carol@example.org'], read('first.eml'), mail_options=['BODY=8BITMIME'])",
        "s.sendmail('', ['dave@example.com'], read('second.eml'))",
        'try:',
        "    s.sendmail('alice@example.com', ['bob@example.com'], b'x' * 60000)",
        "    big = 'accepted'",
        'except smtplib.SMTPSenderRefused as e:',
        '    big = [e.smtp_code, e.smtp_error.decode()]',
        "s.sendmail('alice@example.com', ['erin@example.com'], b'after the refusal\\r\\n')",
        's.quit()',
        "print(json.dumps({'feats': feats, 'big': big}))",
      ].join('\n');
      const r = await execClient('/usr/bin/python3', ['-c', script, String(h.port), dir], {
        timeoutMs: 30_000,
      });
      assert.equal(r.code, 0, r.stderr);
      const got = JSON.parse(r.stdout.toString()) as { feats: Record<string, unknown>; big: unknown };
      assert.deepEqual(got.feats, {
        pipelining: true,
        chunking: true,
        '8bitmime': true,
        enhancedstatuscodes: true,
        size: '50000',
      });
      // smtplib sends SIZE= itself: the 60 kB message is refused at MAIL, before any byte of it.
      assert.deepEqual(got.big, [552, '5.3.4 Message size exceeds fixed maximum message size']);
      await h.settled();
      const d = h.sink.delivered;
      assert.equal(d.length, 3);
      assert.deepEqual(d[0]?.bytes, first);
      assert.deepEqual(d[0]?.envelope, {
        from: 'alice@example.com',
        recipients: ['bob@example.com', 'carol@example.org'],
        body: '8BITMIME',
      });
      assert.deepEqual(d[1]?.bytes, second);
      assert.deepEqual(d[1]?.envelope, { from: '', recipients: ['dave@example.com'], body: '7BIT' });
      assert.equal(d[2]?.bytes.toString(), 'after the refusal\r\n');
      assert.equal(h.sink.reserves, 3, 'the refused MAIL reserved nothing');
      assert.equal(h.sink.releases, 3);
      assert.deepEqual(h.sink.violations, []);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('swaks with --pipeline: MAIL, RCPTs and DATA in one go, the message arrives as sent', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'iop-tx-'));
    try {
      // swaks turns LF into CRLF, dot-stuffs, and ends the data with its own CRLF.
      writeFileSync(join(dir, 'msg'), 'Subject: swaks\n\n.a line with a dot\nbody\n..two');
      const r = await execClient(
        'swaks',
        [
          ...['--server', '127.0.0.1', '--port', String(h.port), '--pipeline', '--ehlo', 'client.example'],
          ...['--from', 'sender@example.com', '--to', 'one@example.com,two@example.net'],
          ...['--data', `@${join(dir, 'msg')}`, '--timeout', '20'],
        ],
        { timeoutMs: 30_000 },
      );
      const out = `${r.stdout.toString()}${r.stderr}`;
      assert.equal(r.code, 0, out);
      // swaks really pipelined: it sent both RCPTs before reading the reply to MAIL.
      assert.match(out, /-> MAIL FROM:<sender@example.com>\s+-> RCPT TO:<one@example.com>/);
      await h.settled();
      assert.equal(h.sink.delivered.length, 1);
      assert.equal(
        h.sink.delivered[0]?.bytes.toString(),
        'Subject: swaks\r\n\r\n.a line with a dot\r\nbody\r\n..two\r\n',
      );
      assert.deepEqual(h.sink.delivered[0]?.envelope.recipients, ['one@example.com', 'two@example.net']);
      assert.equal(h.sink.releases, 1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('BDAT chunks are counted, never scanned: binary bytes, CRLF.CRLF and command words inside arrive as sent', async () => {
    const chunk1 = Buffer.from('Subject: b\r\n\r\n.\r\nQUIT\r\n\x00\xff', 'latin1');
    const chunk2 = Buffer.from('\r\n.\r\nRSET\r\nend');
    const got = await h.talk(
      Buffer.concat([
        Buffer.from(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', `BDAT ${chunk1.length}`])),
        chunk1,
        Buffer.from(`BDAT ${chunk2.length} LAST\r\n`),
        chunk2,
        Buffer.from('QUIT\r\n'),
      ]),
    );
    assert.deepEqual(got, [
      '250 2.1.0 Sender OK',
      '250 2.1.5 Recipient OK',
      `250 2.0.0 ${chunk1.length} octets received`,
      DELIVERED,
      BYE,
    ]);
    assert.deepEqual(h.sink.delivered[0]?.bytes, Buffer.concat([chunk1, chunk2]));
  });

  test('DATA after BDAT in one transaction is refused (RFC 3030), the transaction goes on with BDAT', async () => {
    const got = await h.talk(
      'MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 3\r\nabcDATA\r\nBDAT 3 LAST\r\ndefQUIT\r\n',
    );
    assert.deepEqual(got, [
      '250 2.1.0 Sender OK',
      '250 2.1.5 Recipient OK',
      '250 2.0.0 3 octets received',
      '503 5.5.1 DATA not allowed after BDAT in the same transaction',
      DELIVERED,
      BYE,
    ]);
    assert.equal(h.sink.delivered[0]?.bytes.toString(), 'abcdef');
  });

  test('commands out of sequence, and the ones an authenticated session does not run', async () => {
    const got = await h.talk(
      crlf([
        'RCPT TO:<b@example.com>',
        'DATA',
        'MAIL FROM:<a@example.com>',
        'DATA',
        'MAIL FROM:<a@example.com>',
        'AUTH PLAIN AGFsaWNlAHB3',
        'STARTTLS',
        'VRFY alice',
        'HELP',
        'FOO bar',
        'DATA now',
        'RSET please',
        'rcpt to:<b@example.com>',
        'EHLO client.example',
        'RCPT TO:<b@example.com>',
        'MAIL FROM:<a@example.com>',
        'HELO client.example',
        'RCPT TO:<b@example.com>',
        'HELO',
        'noop anything',
        'QUIT',
      ]),
    );
    assert.deepEqual(got, [
      '503 5.5.1 Need MAIL before RCPT',
      '503 5.5.1 No valid sender and recipients',
      '250 2.1.0 Sender OK',
      '503 5.5.1 No valid sender and recipients',
      '503 5.5.1 Sender already specified',
      '503 5.5.1 Already authenticated',
      '503 5.5.1 STARTTLS not possible now',
      '252 2.5.0 Cannot verify the user, but will accept the message',
      '214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY',
      '500 5.5.2 Command not recognized',
      '501 5.5.4 Syntax: DATA',
      '501 5.5.4 Syntax: RSET',
      '250 2.1.5 Recipient OK',
      // EHLO is an implicit RSET: the transaction is gone, the login stays.
      ...EHLO_REPLY,
      '503 5.5.1 Need MAIL before RCPT',
      '250 2.1.0 Sender OK',
      `250 ${NAME}`,
      '503 5.5.1 Need MAIL before RCPT',
      '501 5.5.4 Syntax: HELO domain-or-address',
      '250 2.0.0 OK',
      BYE,
    ]);
    await h.settled();
    assert.equal(h.sink.reserves, 2);
    assert.equal(h.sink.releases, 2, 'EHLO and HELO each released the transaction they ended');
    assert.deepEqual(h.sink.delivered, []);
  });

  test('MAIL parameters: SIZE and BODY known, anything else 555; the null sender is accepted', async () => {
    const got = await h.talk(
      crlf([
        'MAIL FROM:<a@example.com> RET=FULL',
        'MAIL FROM:<a@example.com> BODY=BINARYMIME',
        'MAIL FROM:<a@example.com> SIZE=12x',
        'MAIL FROM:<a@example.com> SIZE=1 SIZE=2',
        'MAIL FROM:<a@example.com> SIZE=100001',
        'MAIL FROM:<a@example.com> SIZE=9999999999999999999999',
        'MAIL FROM:<a\x00b@example.com>',
        'MAIL FROM:<noat>',
        'MAIL FROM:a@example.com SIZE=100000 body=8bitmime',
        'RSET',
        'MAIL FROM:<>',
        'QUIT',
      ]),
    );
    assert.deepEqual(got, [
      '555 5.5.4 Parameter not recognized',
      '555 5.5.4 Parameter not recognized',
      '501 5.5.4 Syntax: SIZE=<octets>',
      '501 5.5.4 Syntax: SIZE given twice',
      '552 5.3.4 Message size exceeds fixed maximum message size',
      '552 5.3.4 Message size exceeds fixed maximum message size',
      '501 5.1.7 Bad sender address syntax',
      '501 5.1.7 Bad sender address syntax',
      '250 2.1.0 Sender OK',
      '250 2.0.0 OK',
      '250 2.1.0 Sender OK',
      BYE,
    ]);
    await h.settled();
    assert.equal(h.sink.reserves, 2, 'only accepted MAILs reserve');
    assert.equal(h.sink.releases, 2);
  });

  test('recipient addresses: common forms accepted and kept as sent; CR, NUL, non-ASCII and junk refused', async () => {
    h.over = { maxRecipients: 20, badCommands: 20 };
    const accepted = [
      ['<b@example.com>', 'b@example.com'],
      ['<"quoted local"@example.com>', '"quoted local"@example.com'],
      ['<@relay.example:c@example.com>', '@relay.example:c@example.com'],
      [' <d@example.com>', 'd@example.com'],
      ['e@example.com', 'e@example.com'],
      ['<Postmaster>', 'Postmaster'],
      ['<f@[192.0.2.1]>', 'f@[192.0.2.1]'],
      ['<G+tag.x@Sub.Example.co.uk>', 'G+tag.x@Sub.Example.co.uk'],
    ] as const;
    const refused = [
      ['<no-at-sign>', '501 5.1.3 Bad recipient address syntax'],
      ['<a@b\x00c.example>', '501 5.1.3 Bad recipient address syntax'],
      ['<a\r@example.com>', '501 5.1.3 Bad recipient address syntax'],
      ['<>', '501 5.1.3 Bad recipient address syntax'],
      ['<a@@example.com>', '501 5.1.3 Bad recipient address syntax'],
      [`<${'l'.repeat(250)}@example.com>`, '501 5.1.3 Bad recipient address syntax'],
      ['<\xc3\xbc@example.com>', '553 5.6.7 Non-ASCII address needs SMTPUTF8, which is not offered'],
      ['<a@example.com> NOTIFY=NEVER', '555 5.5.4 Parameter not recognized'],
      ['<a@example.com', '501 5.5.4 Syntax: RCPT TO:<address>'],
      ['<a@example.com>x', '501 5.5.4 Syntax: RCPT TO:<address>'],
    ] as const;
    const got = await h.talk(
      Buffer.from(
        crlf([
          'MAIL FROM:<a@example.com>',
          ...accepted.map(([a]) => `RCPT TO:${a}`),
          ...refused.map(([a]) => `RCPT TO:${a}`),
          'DATA',
          '.',
          'QUIT',
        ]),
        'latin1',
      ),
    );
    assert.deepEqual(got, [
      '250 2.1.0 Sender OK',
      ...accepted.map(() => '250 2.1.5 Recipient OK'),
      ...refused.map(([, r]) => r),
      START_DATA,
      DELIVERED,
      BYE,
    ]);
    assert.deepEqual(
      h.sink.delivered[0]?.envelope.recipients,
      accepted.map(([, kept]) => kept),
    );
  });

  describe('limits', () => {
    test('a command line of lineBytes is read; one byte more is 500 Line too long, and the next command is in sync', async () => {
      h.over = { lineBytes: 64 };
      const at = `NOOP ${'x'.repeat(59)}`;
      const over = `NOOP ${'x'.repeat(60)}`;
      assert.equal(at.length, 64);
      const got = await h.talk(
        // The CRLF of the line at the limit comes in a later piece than its CR.
        cutAt(Buffer.from(crlf([at, over, 'NOOP', 'QUIT'])), [65]),
      );
      assert.deepEqual(got, ['250 2.0.0 OK', '500 5.5.2 Line too long', '250 2.0.0 OK', BYE]);
      // A long line without LF in many pieces: one refusal, its rest is discarded up to its LF.
      const long = Buffer.from(`MAIL FROM:<${'z'.repeat(1000)}@example.com>\r\nNOOP\r\nQUIT\r\n`);
      assert.deepEqual(await h.talk(cutAt(long, [10, 70, 200, 500, 900, 1020])), [
        '500 5.5.2 Line too long',
        '250 2.0.0 OK',
        BYE,
      ]);
      assert.equal(h.sink.reserves, 0, 'the too-long MAIL never reached the sink');
    });

    test('idle between commands and inside DATA: 421 4.4.2 and close, the half-read message is dropped', async () => {
      h.over = { idleMs: 200 };
      const t0 = Date.now();
      assert.deepEqual(await h.talk([]), [`421 4.4.2 ${NAME} Idle too long, closing connection`]);
      assert.ok(Date.now() - t0 >= 190, 'not before the idle time');
      const got = await h.talk('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhalf a mess');
      assert.deepEqual(got, [
        '250 2.1.0 Sender OK',
        '250 2.1.5 Recipient OK',
        START_DATA,
        `421 4.4.2 ${NAME} Idle too long, closing connection`,
      ]);
      await h.settled();
      assert.deepEqual(h.sink.delivered, []);
      assert.equal(h.sink.releases, 1);
    });

    test('ten bad commands in a row: 421 and close; a good one in between starts the count again', async () => {
      const bad = Array.from({ length: 9 }, () => 'FOO');
      assert.deepEqual(await h.talk(crlf([...bad, 'NOOP', ...bad, 'QUIT'])), [
        ...bad.map(() => '500 5.5.2 Command not recognized'),
        '250 2.0.0 OK',
        ...bad.map(() => '500 5.5.2 Command not recognized'),
        BYE,
      ]);
      assert.deepEqual(await h.talk(crlf([...bad, 'RCPT TO:<x@example.com>', 'NOOP'])), [
        ...bad.map(() => '500 5.5.2 Command not recognized'),
        '503 5.5.1 Need MAIL before RCPT',
        `421 4.7.0 ${NAME} Too many errors`,
      ]);
    });

    test('recipients: maxRecipients accepted, the next one 452 4.5.3, the message goes to those accepted', async () => {
      h.over = { maxRecipients: 3 };
      const rcpts = [1, 2, 3, 4].map((n) => `RCPT TO:<r${n}@example.com>`);
      const got = await h.talk(crlf(['MAIL FROM:<a@example.com>', ...rcpts, 'DATA', 'hi', '.', 'QUIT']));
      assert.deepEqual(got, [
        '250 2.1.0 Sender OK',
        '250 2.1.5 Recipient OK',
        '250 2.1.5 Recipient OK',
        '250 2.1.5 Recipient OK',
        '452 4.5.3 Too many recipients',
        START_DATA,
        DELIVERED,
        BYE,
      ]);
      assert.deepEqual(h.sink.delivered[0]?.envelope.recipients, [
        'r1@example.com',
        'r2@example.com',
        'r3@example.com',
      ]);
    });

    test('DATA: a message of exactly the limit is delivered; one byte more is read to its end, refused 552 and never held', async () => {
      h.over = { maxMessageBytes: 1000 };
      const tx = crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA']);
      // Dot-stuffed lines count as unstuffed: 1000 bytes delivered from more on the wire.
      const exact = `${'.x\r\n'.repeat(10)}${'y'.repeat(1000 - 40 - 2)}\r\n`;
      const exactWire = `${'..x\r\n'.repeat(10)}${'y'.repeat(1000 - 40 - 2)}\r\n`;
      assert.equal(Buffer.byteLength(exact), 1000);
      const overBy1 = `${'y'.repeat(999)}\r\n`;
      const huge = `${'z'.repeat(998)}\r\n`.repeat(200);
      const got = await h.talk(`${tx}${exactWire}.\r\n${tx}${overBy1}.\r\n${tx}${huge}.\r\nNOOP\r\nQUIT\r\n`);
      const tooBig = '552 5.3.4 Message size exceeds fixed maximum message size';
      const accepted = ['250 2.1.0 Sender OK', '250 2.1.5 Recipient OK', START_DATA];
      assert.deepEqual(got, [
        ...accepted,
        DELIVERED,
        ...accepted,
        tooBig,
        ...accepted,
        tooBig,
        '250 2.0.0 OK',
        BYE,
      ]);
      await h.settled();
      assert.equal(h.sink.delivered.length, 1);
      assert.equal(h.sink.delivered[0]?.bytes.toString(), exact);
      assert.ok(h.sink.peakHeld <= 1000, `never held more than the limit (peak ${h.sink.peakHeld})`);
      assert.equal(h.sink.releases, 3);
      assert.deepEqual(h.sink.violations, []);
    });

    test('BDAT over the limit: the chunk is read and dropped, 552, and chunks still in the pipeline get 503', async () => {
      h.over = { maxMessageBytes: 1000 };
      const got = await h.talk(
        Buffer.concat([
          Buffer.from(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'BDAT 600'])),
          Buffer.alloc(600, 0x61),
          Buffer.from('BDAT 600\r\n'),
          Buffer.alloc(600, 0x62),
          Buffer.from('BDAT 10 LAST\r\n'),
          Buffer.from('NOOP\r\nQUIT'),
          Buffer.from(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'BDAT 1000 LAST'])),
          Buffer.alloc(1000, 0x63),
          Buffer.from('QUIT\r\n'),
        ]),
      );
      assert.deepEqual(got, [
        '250 2.1.0 Sender OK',
        '250 2.1.5 Recipient OK',
        '250 2.0.0 600 octets received',
        '552 5.3.4 Message size exceeds fixed maximum message size',
        '503 5.5.1 No valid sender and recipients',
        '250 2.1.0 Sender OK',
        '250 2.1.5 Recipient OK',
        DELIVERED,
        BYE,
      ]);
      await h.settled();
      assert.equal(h.sink.delivered.length, 1);
      assert.deepEqual(h.sink.delivered[0]?.bytes, Buffer.alloc(1000, 0x63));
      assert.ok(h.sink.peakHeld <= 1000, `peak ${h.sink.peakHeld}`);
      assert.equal(h.sink.releases, 2);
    });

    test('the sink refuses at MAIL (reserve) and mid-DATA (hold): its reply reaches the client, nothing stays held', async () => {
      h.sink.reserveReply = { code: 452, enhanced: '4.3.1', text: 'Too much mail in flight' };
      assert.deepEqual(await h.talk(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'QUIT'])), [
        '452 4.3.1 Too much mail in flight',
        '503 5.5.1 Need MAIL before RCPT',
        BYE,
      ]);
      h.sink = new RecordingSink();
      h.sink.holdBudget = 500;
      const body = `${'q'.repeat(98)}\r\n`.repeat(20);
      // Written in pieces so that the budget is passed part-way through.
      const wire = Buffer.from(
        `${crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA'])}${body}.\r\nNOOP\r\nQUIT\r\n`,
      );
      const got = await h.talk(cutAt(wire, [80, 300, 600, 900, 1500]));
      assert.deepEqual(got, [
        '250 2.1.0 Sender OK',
        '250 2.1.5 Recipient OK',
        START_DATA,
        '452 4.3.1 Over the in-flight budget',
        '250 2.0.0 OK',
        BYE,
      ]);
      await h.settled();
      assert.deepEqual(h.sink.delivered, []);
      assert.equal(h.sink.held, 0);
      assert.ok(h.sink.holds >= 2, 'the sink was asked as the message grew');
      assert.deepEqual(h.sink.violations, []);
    });
  });

  test('a crash mid-transaction never answers 250 for an undelivered message', async () => {
    const cases: Array<[string, Buffer]> = [
      [
        'mid-DATA',
        Buffer.from(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA', 'line'])),
      ],
      [
        'before the last CRLF of the marker',
        Buffer.from('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nx\r\n.\r'),
      ],
      [
        'mid-BDAT',
        Buffer.from('MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 10 LAST\r\nabcde'),
      ],
    ];
    for (const [what, wire] of cases) {
      for (const how of ['destroy', 'end'] as const) {
        const c = await RawImapClient.connect(h.port);
        assert.equal(await c.readLine(), GREETING);
        c.write(wire);
        await c.readLine();
        await c.readLine();
        if (what !== 'mid-BDAT') assert.equal(await c.readLine(), START_DATA);
        if (how === 'destroy') c.socket.destroy();
        else c.socket.end();
        const rest = how === 'end' ? await c.readToClose(5000) : '';
        assert.equal(rest, '', `${what}, ${how}: nothing more is answered`);
      }
    }
    await h.settled();
    assert.deepEqual(h.sink.delivered, [], 'the sink never got an incomplete message');
    assert.equal(h.sink.reserves, 6);
    assert.equal(h.sink.releases, 6, 'every reservation released');
  });

  test('logs: no message body at any level, no address above debug', async () => {
    const chunks: string[] = [];
    const destination = new Writable({
      write(c, _e, cb) {
        chunks.push(String(c));
        cb();
      },
    });
    h.over = { log: createLogger({ level: 'trace', format: 'json', destination }) };
    await h.talk(
      crlf([
        'MAIL FROM:<sender.person@example.com>',
        'RCPT TO:<hidden.person@example.com>',
        'DATA',
        'Subject: BODY-SECRET-7f3',
        '',
        'BODY-SECRET-7f3',
        '.',
        'QUIT',
      ]),
    );
    await h.settled();
    const logs = chunks
      .join('')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { level: number; msg: string });
    assert.ok(
      logs.some((l) => l.msg === 'delivery result'),
      'the delivery is logged',
    );
    assert.ok(!chunks.join('').includes('BODY-SECRET-7f3'), 'no body text');
    const aboveDebug = JSON.stringify(logs.filter((l) => l.level > 20));
    assert.ok(!aboveDebug.includes('person@example.com'), aboveDebug);
  });
});

describe('SMTP transaction session in-process (duplex pair)', () => {
  test('while a message is delivered nothing more is read: pipelined commands wait, the writer meets backpressure, replies stay in order', async () => {
    const sink = new RecordingSink();
    let open!: () => void;
    sink.gate = new Promise((r) => {
      open = r;
    });
    const [client, server] = duplexPair({ highWaterMark: 16 * 1024 });
    let out = '';
    client.on('data', (d: Buffer) => {
      out += d.toString('latin1');
    });
    const { done } = runTransactions(server, sessionOptions(sink));
    const arrived = sink.arrival();
    client.write(
      crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA', 'body', '.', 'NOOP', 'HELP']),
    );
    await withDeadline(arrived, 2000, 'the message to reach the sink');
    // Commands sent while the far end works: the session must not read them.
    const noop = Buffer.from('NOOP\r\n'.repeat(200));
    let writes = 0;
    while (client.write(noop)) {
      writes++;
      assert.ok(writes < 1000, 'the client must meet backpressure while delivery is pending');
    }
    writes++;
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual(replies(out), ['250 2.1.0 Sender OK', '250 2.1.5 Recipient OK', START_DATA]);
    open();
    const expected = 3 + 1 + 2 + writes * 200;
    await until(() => replies(out).length >= expected, 5000, 'every pipelined command answered');
    const got = replies(out);
    assert.equal(got[3], DELIVERED, 'the delivery reply comes first');
    assert.equal(got[4], '250 2.0.0 OK');
    assert.match(got[5] ?? '', /^214 /);
    assert.ok(got.slice(6).every((r) => r === '250 2.0.0 OK'));
    client.end('QUIT\r\n');
    await withDeadline(done, 2000, 'the session to end');
    assert.equal(sink.releases, 1);
  });

  test('a client that never reads its replies is read no further (the session waits on drain)', async () => {
    const sink = new RecordingSink();
    const [client, server] = duplexPair({ highWaterMark: 16 * 1024 });
    const { done } = runTransactions(server, sessionOptions(sink));
    // No reader on the client: replies pile up until the session stops reading.
    const noop = Buffer.from('NOOP\r\n'.repeat(1000));
    let sent = 0;
    while (client.write(noop)) {
      sent += 1000;
      assert.ok(sent < 1_000_000, 'the session must stop reading');
    }
    sent += 1000;
    let got = '';
    client.on('data', (d: Buffer) => {
      got += d.toString('latin1');
    });
    await until(() => replies(got).length >= sent, 5000, 'all answered once the client reads');
    assert.ok(replies(got).every((r) => r === '250 2.0.0 OK'));
    client.end('QUIT\r\n');
    await withDeadline(done, 2000, 'the session to end');
  });

  test('the client leaves while a delivery is pending: the signal aborts, no reply, the reservation ends when the deliverer is done', async () => {
    const sink = new RecordingSink();
    let open!: () => void;
    sink.gate = new Promise((r) => {
      open = r;
    });
    const [client, server] = duplexPair();
    client.on('data', () => {});
    const { done } = runTransactions(server, sessionOptions(sink));
    const arrived = sink.arrival();
    client.write(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA', 'body', '.']));
    await withDeadline(arrived, 2000, 'the message to reach the sink');
    const signal = sink.delivered[0]?.signal;
    assert.equal(signal?.aborted, false);
    client.destroy();
    await until(() => signal?.aborted === true, 2000, 'the signal to abort');
    assert.equal(sink.releases, 0, 'the budget stays counted while the deliverer still holds the message');
    let ended = false;
    void done.then(() => {
      ended = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(ended, false, 'done waits for the deliverer');
    open();
    await withDeadline(done, 2000, 'the session to end');
    assert.equal(sink.releases, 1);
    assert.deepEqual(sink.violations, []);
  });

  test('the message is kept as the slices read: a big write is not copied, a byte-by-byte one is not a Buffer per byte', async () => {
    const sink = new RecordingSink();
    const big = Buffer.alloc(80_000, 0x6d);
    big.write('\r\n', big.length - 2);
    const bdat = await runOnPair(sessionOptions(sink), [
      Buffer.from(crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', `BDAT ${big.length} LAST`])),
      big,
      Buffer.from('QUIT\r\n'),
    ]);
    assert.match(bdat.out, /250 2\.0\.0 Delivered/);
    assert.equal(sink.delivered[0]?.chunks, 1);
    assert.equal(
      sink.delivered[0]?.message[0]?.buffer,
      big.buffer,
      'the chunk written is the chunk delivered',
    );
    const body = Buffer.from(`${'abcdefghi\r\n'.repeat(500)}`);
    const wire = Buffer.from(
      `${crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA'])}${body.toString()}.\r\nQUIT\r\n`,
    );
    await runOnPair(
      sessionOptions(sink),
      [...wire].map((b) => Buffer.from([b])),
      30_000,
    );
    assert.deepEqual(sink.delivered[1]?.bytes, body);
    assert.ok(
      (sink.delivered[1]?.chunks ?? 0) <= 2,
      `${sink.delivered[1]?.chunks} Buffers for ${body.length} bytes`,
    );
  });

  test('a sink that breaks its contract (deliver rejects, hold throws) costs a reply or the connection, never the process', async () => {
    const sink = new RecordingSink();
    sink.deliver = async () => {
      throw new Error('far end exploded');
    };
    const tx = crlf(['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.com>', 'DATA', 'body', '.']);
    const first = await runOnPair(sessionOptions(sink), [Buffer.from(`${tx}NOOP\r\nQUIT\r\n`)]);
    assert.deepEqual(replies(first.out), [
      '250 2.1.0 Sender OK',
      '250 2.1.5 Recipient OK',
      START_DATA,
      '451 4.3.0 Delivery failed; try again later',
      '250 2.0.0 OK',
      BYE,
    ]);
    assert.equal(sink.releases, 1);
    const throwing = new RecordingSink();
    throwing.hold = () => {
      throw new Error('budget broken');
    };
    const second = await runOnPair(sessionOptions(throwing), [Buffer.from(`${tx}NOOP\r\n`)]);
    assert.deepEqual(replies(second.out).slice(-1), [`421 4.3.0 ${NAME} Internal error, closing connection`]);
    assert.equal(throwing.releases, 1);
  });
});
