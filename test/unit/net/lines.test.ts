import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { LineSplitter } from '../../../src/net/lines.js';

/** What a sink saw: each line as latin1 text, a breach as TOO_LONG. */
const TOO_LONG = '<too long>';

function feed(max: number, chunks: Buffer[]): string[] {
  const seen: string[] = [];
  const s = new LineSplitter(max, {
    line: (l) => seen.push(l.toString('latin1')),
    tooLong: () => seen.push(TOO_LONG),
  });
  for (const c of chunks) s.push(c);
  return seen;
}

/** The input whole, byte by byte, and cut in two at every offset: all give `expected`. */
function assertEveryChunking(max: number, input: string, expected: string[]): void {
  const all = Buffer.from(input, 'latin1');
  assert.deepEqual(feed(max, [all]), expected, 'whole');
  assert.deepEqual(
    feed(
      max,
      [...all].map((b) => Buffer.from([b])),
    ),
    expected,
    'byte by byte',
  );
  for (let i = 0; i <= all.length; i++)
    assert.deepEqual(feed(max, [all.subarray(0, i), all.subarray(i)]), expected, `split at ${i}`);
}

test('CRLF and bare LF lines, empty lines and a CR inside a line, however the bytes arrive', () => {
  assertEveryChunking(64, 'EHLO a.example\r\nNOOP\n\r\n\nAUTH a\rb\r\nQUIT\r\nunfinished', [
    'EHLO a.example',
    'NOOP',
    '',
    '',
    'AUTH a\rb',
    'QUIT',
  ]);
});

test('a line exactly at the limit is delivered; one byte over fails once and ignores the rest', () => {
  const max = 16;
  const at = 'x'.repeat(max);
  assertEveryChunking(max, `${at}\r\n${at}\n`, [at, at]);
  assertEveryChunking(max, `ok\r\n${at}y\r\nNOOP\r\n`, ['ok', TOO_LONG]);
  assertEveryChunking(max, `${at}y\nNOOP\n`, [TOO_LONG]);
});

test('without a LF yet: one byte of grace for a CR, then it fails instead of buffering on', () => {
  const max = 8;
  // max + 1 bytes may be a full line whose LF is still on its way.
  assert.deepEqual(feed(max, [Buffer.from('12345678\r')]), []);
  assert.deepEqual(feed(max, [Buffer.from('12345678\r'), Buffer.from('\n')]), ['12345678']);
  assert.deepEqual(feed(max, [Buffer.from('123456789')]), [], 'max + 1 bytes still wait');
  assert.deepEqual(feed(max, [Buffer.from('123456789'), Buffer.from('\n')]), [TOO_LONG]);
  assert.deepEqual(feed(max, [Buffer.from('1234567890')]), [TOO_LONG], 'max + 2 bytes fail at once');
  assert.deepEqual(feed(max, [Buffer.from('12345678\r\r\n')]), [TOO_LONG], 'only one CR is grace');
});

test('tooLong is reported once; later pushes and resume() do nothing', () => {
  let lines = 0;
  let breaches = 0;
  const s = new LineSplitter(4, { line: () => lines++, tooLong: () => breaches++ });
  s.push(Buffer.from('abcdefgh'));
  s.push(Buffer.from('\r\nok\r\n'));
  s.pause();
  s.resume();
  assert.deepEqual([lines, breaches], [0, 1]);
  assert.equal(s.takePending().length, 0, 'nothing of a failed stream is kept');
});

test('pause() inside line() stops right after that line; takePending() hands over the rest untouched', () => {
  const seen: string[] = [];
  const s: LineSplitter = new LineSplitter(64, {
    line: (l) => {
      seen.push(l.toString());
      if (l.toString() === 'AUTH PLAIN x') s.pause();
    },
    tooLong: () => assert.fail('no line is too long'),
  });
  s.push(Buffer.from('EHLO a\r\nAUTH PLAIN x\r\nMAIL FROM:<a@b>\r\nDATA'));
  assert.deepEqual(seen, ['EHLO a', 'AUTH PLAIN x']);
  assert.equal(s.isPaused, true);
  s.push(Buffer.from('\r\nmore'));
  assert.deepEqual(seen, ['EHLO a', 'AUTH PLAIN x'], 'a paused splitter only buffers');
  assert.equal(s.takePending().toString(), 'MAIL FROM:<a@b>\r\nDATA\r\nmore');
  assert.equal(s.takePending().length, 0, 'taken once');
  s.resume();
  s.push(Buffer.from('NOOP\r\n'));
  assert.deepEqual(seen, ['EHLO a', 'AUTH PLAIN x', 'NOOP'], 'the taken bytes are never split');
});

test('resume() goes on with the lines that arrived while paused, in order', () => {
  const seen: string[] = [];
  const s: LineSplitter = new LineSplitter(64, {
    line: (l) => {
      seen.push(l.toString());
      s.pause();
    },
    tooLong: () => assert.fail('no line is too long'),
  });
  s.push(Buffer.from('a\r\nb\r\n'));
  s.push(Buffer.from('c\r\nd'));
  assert.deepEqual(seen, ['a']);
  s.resume();
  assert.deepEqual(seen, ['a', 'b']);
  s.resume();
  s.resume();
  assert.deepEqual(seen, ['a', 'b', 'c']);
  s.resume();
  assert.deepEqual(seen, ['a', 'b', 'c'], 'an unfinished line waits');
  s.push(Buffer.from('\n'));
  assert.deepEqual(seen, ['a', 'b', 'c', 'd'], 'its LF finishes it');
});

test('fuzz: any bytes give the same lines however they are chunked, and no line exceeds the limit', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
      fc.array(fc.nat(), { maxLength: 10 }),
      fc.integer({ min: 1, max: 40 }),
      (input, cuts, max) => {
        const whole = feed(max, [input]);
        const points = [...new Set(cuts.map((n) => n % (input.length + 1)))].sort((a, b) => a - b);
        const pieces: Buffer[] = [];
        let prev = 0;
        for (const p of [...points, input.length]) {
          pieces.push(input.subarray(prev, p));
          prev = p;
        }
        assert.deepEqual(feed(max, pieces), whole);
        for (const l of whole) if (l !== TOO_LONG) assert.ok(l.length <= max);
        assert.ok(whole.indexOf(TOO_LONG) === -1 || whole.indexOf(TOO_LONG) === whole.length - 1);
      },
    ),
    { numRuns: 300 },
  );
});
