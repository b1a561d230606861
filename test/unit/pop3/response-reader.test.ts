import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  type Pop3Multiline,
  type Pop3Response,
  Pop3ResponseReader,
  parseStatusLine,
  type ResponseLimits,
  ResponseParser,
} from '../../../src/protocols/pop3/response-reader.js';
import { POP3_UPSTREAM_LIMITS } from '../../../src/protocols/pop3/upstream-limits.js';

/** Which reads a stream takes: single-line (`next`) or multi-line (`multiline`). */
type Read = 'single' | 'multi';

const STREAM =
  '+OK Dovecot ready.\r\n' +
  '+OK\r\nTOP\r\nUIDL\nSASL PLAIN XOAUTH2 OAUTHBEARER\r\n.\r\n' +
  '-ERR [SYS/TEMP] not now\r\n' +
  '+ \r\n' +
  '+ eyJzdGF0dXMiOiI0MDEifQ==\r\n' +
  '-ERR [IN-USE] Mailbox locked\n' +
  '+OK 2 octets\r\n..stuffed\r\n...\r\n\r\n.\r\n' +
  '-err no such message\r\n' +
  '+ok\r\n';
const READS: Read[] = ['single', 'multi', 'multi', 'single', 'single', 'single', 'multi', 'multi', 'single'];

const lines = (...ls: string[]) => ls.map((l) => Buffer.from(l));
const EXPECTED: (Pop3Response | Pop3Multiline)[] = [
  { status: 'ok', text: 'Dovecot ready.', code: undefined },
  { status: 'ok', text: '', code: undefined, lines: lines('TOP', 'UIDL', 'SASL PLAIN XOAUTH2 OAUTHBEARER') },
  { status: 'err', text: '[SYS/TEMP] not now', code: 'SYS/TEMP', lines: [] },
  { status: 'continue', text: '', code: undefined },
  { status: 'continue', text: 'eyJzdGF0dXMiOiI0MDEifQ==', code: undefined },
  { status: 'err', text: '[IN-USE] Mailbox locked', code: 'IN-USE' },
  { status: 'ok', text: '2 octets', code: undefined, lines: lines('.stuffed', '..', '') },
  { status: 'err', text: 'no such message', code: undefined, lines: [] },
  { status: 'ok', text: '', code: undefined },
];

async function readAll(
  chunks: Buffer[],
  reads: readonly Read[],
  limits?: ResponseLimits,
): Promise<{ got: (Pop3Response | Pop3Multiline)[]; rest: Buffer }> {
  const s = new PassThrough();
  const reader = new Pop3ResponseReader(s, limits);
  const got: (Pop3Response | Pop3Multiline)[] = [];
  const pending = (async () => {
    for (const r of reads) got.push(await (r === 'multi' ? reader.multiline(1000) : reader.next(1000)));
  })();
  for (const c of chunks) s.write(c);
  await pending;
  return { got, rest: reader.detach() };
}

/** All responses in the pieces through the bare parser, each read as `reads` says. */
function parseAll(pieces: Buffer[], reads: readonly Read[], limits?: ResponseLimits) {
  const p = new ResponseParser(limits);
  const out: (Pop3Response | Pop3Multiline)[] = [];
  for (let piece of pieces) {
    for (let got = p.feed(piece, reads[out.length] === 'multi'); got; ) {
      out.push(got.response);
      piece = piece.subarray(got.end);
      got = p.feed(piece, reads[out.length] === 'multi');
    }
  }
  return out;
}

test('reader parses responses fed whole, byte by byte, and split at every offset; the rest stays raw', async () => {
  const all = Buffer.from(`${STREAM}TRAILING`);
  assert.deepEqual(await readAll([all], READS), { got: EXPECTED, rest: Buffer.from('TRAILING') });
  const byByte = await readAll(
    [...all].map((b) => Buffer.from([b])),
    READS,
  );
  assert.deepEqual(byByte, { got: EXPECTED, rest: Buffer.from('TRAILING') });
  for (let i = 1; i < all.length; i++) {
    const r = await readAll([all.subarray(0, i), all.subarray(i)], READS);
    assert.deepEqual(r.got, EXPECTED, `split at ${i}`);
    assert.equal(r.rest.toString(), 'TRAILING', `split at ${i}`);
  }
});

test('status lines: +OK, -ERR and + in either case, response codes, and what is not one', () => {
  const st = (s: string) => parseStatusLine(Buffer.from(s));
  assert.deepEqual(st('+OK [XOAUTH2] done'), { status: 'ok', text: '[XOAUTH2] done', code: 'XOAUTH2' });
  assert.deepEqual(st('-ERR [auth] Authentication failed.'), {
    status: 'err',
    text: '[auth] Authentication failed.',
    code: 'AUTH',
  });
  assert.deepEqual(st('-ERR'), { status: 'err', text: '', code: undefined });
  assert.deepEqual(st('+'), { status: 'continue', text: '', code: undefined });
  // A continuation's text is base64, never a response code.
  assert.equal(st('+ [IN-USE]').code, undefined);
  for (const bad of ['* OK IMAP4rev1 ready', '220 smtp ready', '+OKAY', '-ERROR', '+x', '-', '', 'OK']) {
    assert.throws(() => st(bad), { reason: 'protocol_error', detail: 'unexpected_response' }, bad);
  }
});

test('a line exactly at the limit parses; one byte over fails with line_too_long', () => {
  const max = POP3_UPSTREAM_LIMITS.lineBytes;
  const head = '+ ';
  const atLimit = Buffer.from(`${head}${'x'.repeat(max - head.length)}\r\n`);
  assert.equal(parseAll([atLimit], ['single'])[0]?.text.length, max - head.length);
  const over = Buffer.from(`${head}${'x'.repeat(max - head.length + 1)}\r\n`);
  assert.throws(() => parseAll([over], ['single']), { reason: 'protocol_error', detail: 'line_too_long' });
  // Without a LF yet: one byte of slack for a CR still to come, then it fails instead of buffering on.
  assert.deepEqual(parseAll([Buffer.alloc(max + 1, 0x2b)], ['single']), []);
  assert.throws(() => parseAll([Buffer.alloc(max + 2, 0x2b)], ['single']), { detail: 'line_too_long' });
  // Body lines are bounded the same way.
  const body = Buffer.from(`+OK\r\n${'y'.repeat(max + 1)}\r\n.\r\n`);
  assert.throws(() => parseAll([body], ['multi']), { detail: 'line_too_long' });
});

test('a 17 KB challenge (a 12 KB token in base64) is read whole', () => {
  const big = Buffer.alloc(12 * 1024, 0x61).toString('base64');
  assert.deepEqual(parseAll([Buffer.from(`+ ${big}\r\n`)], ['single']), [
    { status: 'continue', text: big, code: undefined },
  ]);
});

test('lines and bytes per multi-line response: exactly at the limit parses, one over fails', () => {
  const limits: ResponseLimits = { lineBytes: 100, responseLines: 4, responseBytes: 40 };
  const resp = (n: number, text: string) =>
    Buffer.from(`+OK\r\n${Array.from({ length: n }, () => `${text}\r\n`).join('')}.\r\n`);
  assert.equal((parseAll([resp(4, 'x')], ['multi'], limits)[0] as Pop3Multiline).lines.length, 4);
  assert.throws(() => parseAll([resp(5, 'x')], ['multi'], limits), { detail: 'message_too_long' });
  // 5 (+OK CRLF) + 2 × 16 + 3 (. CRLF) = 40 bytes on the wire; one more byte in a line makes 41.
  const at = resp(2, 'y'.repeat(14));
  assert.equal(at.length, 40);
  assert.equal((parseAll([at], ['multi'], limits)[0] as Pop3Multiline).lines.length, 2);
  const over = Buffer.from(`+OK\r\n${'y'.repeat(15)}\r\n${'y'.repeat(14)}\r\n.\r\n`);
  assert.throws(() => parseAll([over], ['multi'], limits), { detail: 'message_too_long' });
  // The bound is per response: many small ones in a row are fine.
  assert.equal(
    parseAll([Buffer.from('+OK\r\n.\r\n'.repeat(50))], Array(50).fill('multi'), limits).length,
    50,
  );
});

test('reader: a response before a close is delivered, then the close; silence times out', async () => {
  const s = new PassThrough();
  const reader = new Pop3ResponseReader(s);
  await assert.rejects(reader.next(20), { reason: 'timeout', detail: 'response_timeout' });
  s.end('-ERR [SYS/TEMP] shutting down\r\n+OK partial');
  assert.deepEqual(await reader.next(1000), {
    status: 'err',
    text: '[SYS/TEMP] shutting down',
    code: 'SYS/TEMP',
  });
  await assert.rejects(reader.next(1000), { reason: 'upstream_unavailable', detail: 'closed' });
  assert.equal(reader.failed, true);
});

test('reader: unsolicited bytes count as pending; detach returns a half-read response whole', async () => {
  const s = new PassThrough();
  const reader = new Pop3ResponseReader(s);
  s.write('-ERR idle timeout\r\n');
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.pendingBytes, 19);
  assert.equal(reader.failed, false);
  assert.deepEqual(await reader.next(1000), { status: 'err', text: 'idle timeout', code: undefined });
  assert.equal(reader.pendingBytes, 0);
  // A timeout in the middle of a body keeps its bytes.
  s.write('+OK\r\nTOP\r\nUI');
  await assert.rejects(reader.multiline(20), { reason: 'timeout' });
  assert.equal(reader.pendingBytes, 12);
  assert.equal(reader.detach().toString(), '+OK\r\nTOP\r\nUI');
  assert.equal(s.listenerCount('data'), 0);
  assert.equal(s.isPaused(), true);
});

test('reader: a flood nobody reads is bounded, and a breach ends the reader', async () => {
  const limits: ResponseLimits = { lineBytes: 100, responseLines: 4, responseBytes: 64 };
  const s = new PassThrough();
  const reader = new Pop3ResponseReader(s, limits);
  s.write(Buffer.alloc(65, 0x2b));
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.failed, true);
  await assert.rejects(reader.next(1000), { reason: 'protocol_error', detail: 'message_too_long' });

  const s2 = new PassThrough();
  const r2 = new Pop3ResponseReader(s2, limits);
  const p = r2.next(1000);
  s2.write('* OK hello\r\n+OK ok\r\n');
  await assert.rejects(p, { detail: 'unexpected_response' });
  // Nothing after a breach is parsed as a response.
  await assert.rejects(r2.next(1000), { detail: 'unexpected_response' });
});

test('fuzz: any sequence of responses split anywhere parses to the same responses', async () => {
  const text = fc.stringMatching(/^[A-Za-z0-9 .=+/-]{0,40}$/);
  const response = fc
    .tuple(
      fc.constantFrom('+OK', '-ERR', '+'),
      text,
      fc.boolean(),
      fc.array(fc.stringMatching(/^[A-Za-z0-9 .]{0,20}$/), { maxLength: 5 }),
      fc.boolean(),
    )
    .map(([ind, t, multi, body, bareLf]) => {
      const eol = bareLf ? '\n' : '\r\n';
      const status = ind === '+OK' ? 'ok' : ind === '-ERR' ? 'err' : 'continue';
      const withBody = multi && status === 'ok';
      const code = status === 'continue' ? undefined : /^\[([^\]\s]{1,64})\]/.exec(t)?.[1]?.toUpperCase();
      const wire =
        `${ind} ${t}${eol}` +
        (withBody ? `${body.map((l) => `${l.startsWith('.') ? '.' : ''}${l}${eol}`).join('')}.${eol}` : '');
      const expected: Pop3Response | Pop3Multiline = multi
        ? { status, text: t, code, lines: withBody ? body.map((l) => Buffer.from(l)) : [] }
        : { status, text: t, code };
      return { read: (multi ? 'multi' : 'single') as Read, wire, expected };
    });
  await fc.assert(
    fc.asyncProperty(
      fc.array(response, { minLength: 1, maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      async (rs, cuts) => {
        const all = Buffer.from(rs.map((r) => r.wire).join(''));
        const reads = rs.map((r) => r.read);
        const expected = rs.map((r) => r.expected);
        const offsets = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const o of [...offsets, all.length]) {
          chunks.push(all.subarray(prev, o));
          prev = o;
        }
        const split = await readAll(chunks, reads);
        assert.deepEqual(split.got, expected);
        assert.equal(split.rest.length, 0);
        // The bare parser returns what a single read gets for a body-less response.
        const bare = parseAll(chunks, reads).map((r, i) =>
          reads[i] === 'multi' && !('lines' in r) ? { ...r, lines: [] } : r,
        );
        assert.deepEqual(bare, expected);
      },
    ),
    { numRuns: 200 },
  );
});
