import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  type ReplyLimits,
  ReplyParser,
  ReplyReader,
  type SmtpReply,
} from '../../../src/protocols/smtp/reply-reader.js';
import { SMTP_UPSTREAM_LIMITS } from '../../../src/protocols/smtp/upstream-limits.js';

const STREAM =
  '220-smtp.example.com ESMTP\r\n220 ready\r\n' +
  '250-smtp.example.com Hello\n250-PIPELINING\n250-AUTH LOGIN XOAUTH2\n250 8BITMIME\n' +
  '334 eyJzdGF0dXMiOiI0MDEifQ==\r\n' +
  '535-5.7.8 Username and Password not accepted.\r\n535 5.7.8  https://support.example/?p=Bad\r\n' +
  '250\r\n' +
  '235-\r\n235 2.7.0 Accepted\r\n';

const EXPECTED: SmtpReply[] = [
  { code: 220, lines: ['smtp.example.com ESMTP', 'ready'] },
  { code: 250, lines: ['smtp.example.com Hello', 'PIPELINING', 'AUTH LOGIN XOAUTH2', '8BITMIME'] },
  { code: 334, lines: ['eyJzdGF0dXMiOiI0MDEifQ=='] },
  {
    code: 535,
    lines: ['5.7.8 Username and Password not accepted.', '5.7.8  https://support.example/?p=Bad'],
  },
  { code: 250, lines: [''] },
  { code: 235, lines: ['', '2.7.0 Accepted'] },
];

async function readAll(chunks: Buffer[], count: number): Promise<{ got: SmtpReply[]; rest: Buffer }> {
  const s = new PassThrough();
  const reader = new ReplyReader(s);
  const got: SmtpReply[] = [];
  const pending = (async () => {
    for (let i = 0; i < count; i++) got.push(await reader.next(1000));
  })();
  for (const c of chunks) s.write(c);
  await pending;
  return { got, rest: reader.detach() };
}

/** All replies in `buf` through the bare parser, fed in the given pieces. */
function parseAll(pieces: Buffer[], limits?: ReplyLimits): SmtpReply[] {
  const p = new ReplyParser(limits);
  const out: SmtpReply[] = [];
  for (let piece of pieces) {
    for (let got = p.feed(piece); got; got = p.feed(piece)) {
      out.push(got.reply);
      piece = piece.subarray(got.end);
    }
  }
  return out;
}

test('reader parses replies fed whole, byte by byte, and split at every offset; the rest stays raw', async () => {
  const all = Buffer.from(STREAM + 'TRAILING');
  assert.deepEqual(await readAll([all], EXPECTED.length), { got: EXPECTED, rest: Buffer.from('TRAILING') });
  const bytes = [...all].map((b) => Buffer.from([b]));
  const byByte = await readAll(bytes, EXPECTED.length);
  assert.deepEqual(byByte.got, EXPECTED);
  assert.equal(byByte.rest.toString(), 'TRAILING');
  for (let i = 1; i < all.length; i++) {
    const r = await readAll([all.subarray(0, i), all.subarray(i)], EXPECTED.length);
    assert.deepEqual(r.got, EXPECTED, `split at ${i}`);
    assert.equal(r.rest.toString(), 'TRAILING', `split at ${i}`);
  }
});

test('a line exactly at the limit parses; one byte over fails with line_too_long', () => {
  const max = SMTP_UPSTREAM_LIMITS.lineBytes;
  const head = '334 ';
  const atLimit = Buffer.from(`${head}${'x'.repeat(max - head.length)}\r\n`);
  assert.equal(parseAll([atLimit])[0]?.lines[0]?.length, max - head.length);
  const over = Buffer.from(`${head}${'x'.repeat(max - head.length + 1)}\r\n`);
  assert.throws(() => parseAll([over]), { reason: 'protocol_error', detail: 'line_too_long' });
  // Without a LF yet: one byte of slack for a CR still to come, then it fails instead of buffering on.
  assert.deepEqual(parseAll([Buffer.alloc(max + 1, 0x32)]), []);
  assert.throws(() => parseAll([Buffer.alloc(max + 2, 0x32)]), { detail: 'line_too_long' });
});

test('a 17 KB challenge line (a 12 KB token in base64) is read whole', () => {
  const big = Buffer.alloc(12 * 1024, 0x61).toString('base64');
  assert.deepEqual(parseAll([Buffer.from(`334 ${big}\r\n`)]), [{ code: 334, lines: [big] }]);
});

test('lines per reply and bytes per reply: exactly at the limit parses, one over fails', () => {
  const limits: ReplyLimits = { lineBytes: 100, replyLines: 4, replyBytes: 40 };
  const reply = (n: number, text: string) =>
    Buffer.from(Array.from({ length: n }, (_, i) => `250${i === n - 1 ? ' ' : '-'}${text}\r\n`).join(''));
  assert.equal(parseAll([reply(4, 'x')], limits)[0]?.lines.length, 4);
  assert.throws(() => parseAll([reply(5, 'x')], limits), { detail: 'message_too_long' });
  // Two lines of 20 bytes (code and separator included) = 40 bytes.
  assert.equal(parseAll([reply(2, 'y'.repeat(16))], limits)[0]?.lines.length, 2);
  assert.throws(() => parseAll([reply(2, 'y'.repeat(17))], limits), { detail: 'message_too_long' });
  // The bound is per reply: many small replies in a row are fine.
  assert.equal(parseAll([Buffer.from('250 ok\r\n'.repeat(50))], limits).length, 50);
});

test('lines that are not SMTP replies fail with unexpected_response', () => {
  for (const bad of [
    '* OK IMAP4rev1 ready\r\n',
    '25\r\n',
    '250x\r\n',
    '2a0 ok\r\n',
    '\r\n',
    '250-first\r\n251 second\r\n',
  ]) {
    assert.throws(() => parseAll([Buffer.from(bad)]), { detail: 'unexpected_response' }, bad);
  }
});

test('reader: replies before a close are delivered, then the close; silence times out', async () => {
  const s = new PassThrough();
  const reader = new ReplyReader(s);
  await assert.rejects(reader.next(20), { reason: 'timeout', detail: 'response_timeout' });
  s.end('421 4.3.2 shutting down\r\n250 partial');
  assert.deepEqual(await reader.next(1000), { code: 421, lines: ['4.3.2 shutting down'] });
  await assert.rejects(reader.next(1000), { reason: 'upstream_unavailable', detail: 'closed' });
  assert.equal(reader.failed, true);
});

test('reader: unsolicited bytes count as pending; detach returns a half-read reply whole', async () => {
  const s = new PassThrough();
  const reader = new ReplyReader(s);
  s.write('421 4.4.2 idle timeout\r\n');
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.pendingBytes, 24);
  assert.equal(reader.failed, false);
  assert.deepEqual(await reader.next(1000), { code: 421, lines: ['4.4.2 idle timeout'] });
  assert.equal(reader.pendingBytes, 0);
  // A timeout in the middle of a reply keeps its bytes.
  s.write('250-one\r\n250-tw');
  await assert.rejects(reader.next(20), { reason: 'timeout' });
  assert.equal(reader.pendingBytes, 15);
  assert.equal(reader.detach().toString(), '250-one\r\n250-tw');
  assert.equal(s.listenerCount('data'), 0);
  assert.equal(s.isPaused(), true);
});

test('reader: a flood nobody reads is bounded, and a breach ends the reader', async () => {
  const limits: ReplyLimits = { lineBytes: 100, replyLines: 4, replyBytes: 64 };
  const s = new PassThrough();
  const reader = new ReplyReader(s, limits);
  s.write(Buffer.alloc(65, 0x32));
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.failed, true);
  await assert.rejects(reader.next(1000), { reason: 'protocol_error', detail: 'message_too_long' });

  const s2 = new PassThrough();
  const r2 = new ReplyReader(s2, limits);
  const p = r2.next(1000);
  s2.write('hello\r\n250 ok\r\n');
  await assert.rejects(p, { detail: 'unexpected_response' });
  // Nothing after a breach is parsed as a reply.
  await assert.rejects(r2.next(1000), { detail: 'unexpected_response' });
});

test('fuzz: any sequence of replies split anywhere parses to the same replies', async () => {
  const text = fc.stringMatching(/^[A-Za-z0-9 .=+/-]{0,40}$/);
  const reply = fc
    .tuple(fc.integer({ min: 200, max: 599 }), fc.array(text, { minLength: 1, maxLength: 5 }), fc.boolean())
    .map(([code, lines, bareLf]) => ({
      code,
      lines,
      wire: lines
        .map((l, i) => `${code}${i === lines.length - 1 ? ' ' : '-'}${l}${bareLf ? '\n' : '\r\n'}`)
        .join(''),
    }));
  await fc.assert(
    fc.asyncProperty(
      fc.array(reply, { minLength: 1, maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      async (rs, cuts) => {
        const all = Buffer.from(rs.map((r) => r.wire).join(''));
        const expected = rs.map((r) => ({ code: r.code, lines: r.lines }));
        const offsets = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const o of [...offsets, all.length]) {
          chunks.push(all.subarray(prev, o));
          prev = o;
        }
        assert.deepEqual(parseAll(chunks), expected);
        const split = await readAll(chunks, rs.length);
        assert.deepEqual(split.got, expected);
        assert.equal(split.rest.length, 0);
      },
    ),
    { numRuns: 200 },
  );
});
