import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type RawCommand, type SplitError, Splitter } from '../../../src/protocols/imap/framing.js';

const LIMITS = { lineBytes: 64, literalBytes: 32, literalsPerCommand: 3 };
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? 200);

interface Seen {
  commands: Array<{ lines: string[]; literals: string[] }>;
  continuations: number[];
  errors: SplitError[];
  maxBuffered: number;
}

function run(chunks: Buffer[], limits = LIMITS): Seen {
  const seen: Seen = { commands: [], continuations: [], errors: [], maxBuffered: 0 };
  const sp = new Splitter(limits, {
    command: (c: RawCommand) =>
      seen.commands.push({
        lines: c.lines.map((l) => l.toString('latin1')),
        literals: c.literals.map((l) => l.toString('latin1')),
      }),
    continuation: (n) => seen.continuations.push(n),
    error: (r) => seen.errors.push(r),
  });
  for (const c of chunks) {
    sp.push(c);
    seen.maxBuffered = Math.max(seen.maxBuffered, sp.bufferedBytes);
  }
  return seen;
}

/** The same input whole, byte by byte, and split in two at every offset: all must agree. */
function everySplit(input: string, limits = LIMITS): Seen {
  const buf = Buffer.from(input, 'latin1');
  const whole = run([buf], limits);
  const bytes = run(
    [...buf].map((b) => Buffer.from([b])),
    limits,
  );
  assert.deepEqual(bytes.commands, whole.commands, 'byte by byte');
  assert.deepEqual(bytes.errors, whole.errors, 'byte by byte errors');
  assert.deepEqual(bytes.continuations, whole.continuations);
  for (let i = 1; i < buf.length; i++) {
    const two = run([buf.subarray(0, i), buf.subarray(i)], limits);
    assert.deepEqual(two.commands, whole.commands, `split at ${i}`);
    assert.deepEqual(two.errors, whole.errors, `split at ${i}`);
  }
  return whole;
}

describe('Splitter', () => {
  test('splits CRLF lines into commands', () => {
    const s = everySplit('a1 NOOP\r\nb2 CAPABILITY\r\n');
    assert.deepEqual(s.commands, [
      { lines: ['a1 NOOP'], literals: [] },
      { lines: ['b2 CAPABILITY'], literals: [] },
    ]);
  });

  test('accepts a bare LF and keeps an incomplete line back', () => {
    const s = everySplit('a NOOP\nb NOO');
    assert.deepEqual(s.commands, [{ lines: ['a NOOP'], literals: [] }]);
  });

  test('synchronizing literal asks for a continuation and reads the counted bytes unscanned', () => {
    const s = everySplit('a LOGIN {5}\r\nal\r\ne {4}\r\n"\r\n}\r\n');
    assert.deepEqual(s.continuations, [5, 4]);
    assert.deepEqual(s.commands, [{ lines: ['a LOGIN {5}', ' {4}', ''], literals: ['al\r\ne', '"\r\n}'] }]);
  });

  test('LITERAL+ and LITERAL- do not ask for a continuation', () => {
    const s = everySplit('a LOGIN {3+}\r\nbob {2-}\r\npw\r\n');
    assert.deepEqual(s.continuations, []);
    assert.deepEqual(s.commands, [{ lines: ['a LOGIN {3+}', ' {2-}', ''], literals: ['bob', 'pw'] }]);
  });

  test('zero-length literal needs no continuation', () => {
    const s = everySplit('a LOGIN {0}\r\n {1+}\r\nx\r\n');
    assert.deepEqual(s.continuations, []);
    assert.deepEqual(s.commands[0]!.literals, ['', 'x']);
  });

  test('braces that are not a literal marker stay text', () => {
    const s = everySplit('a X {5 }\r\nb Y {}\r\nc Z {+}\r\n');
    assert.equal(s.commands.length, 3);
    assert.deepEqual(s.continuations, []);
  });

  test('line exactly at the limit passes, one byte over fails', () => {
    const at = `a ${'x'.repeat(LIMITS.lineBytes - 2)}`;
    assert.equal(at.length, LIMITS.lineBytes);
    assert.deepEqual(everySplit(`${at}\r\n`).commands, [{ lines: [at], literals: [] }]);
    const over = everySplit(`${at}x\r\n`);
    assert.deepEqual(over.errors, ['line_too_long']);
    assert.equal(over.commands.length, 0);
  });

  test('the line limit counts every line part of one command', () => {
    const part = 'a LOGIN {1+}';
    const rest = ` ${'y'.repeat(LIMITS.lineBytes - part.length - 1)}`;
    assert.equal(everySplit(`${part}\r\nx${rest}\r\n`).commands.length, 1);
    assert.deepEqual(everySplit(`${part}\r\nx${rest}y\r\n`).errors, ['line_too_long']);
  });

  test('literal exactly at the limit passes, one byte over fails before any byte is read', () => {
    const lit = 'z'.repeat(LIMITS.literalBytes);
    const ok = everySplit(`a LOGIN {${LIMITS.literalBytes}+}\r\n${lit} p\r\n`);
    assert.deepEqual(ok.commands[0]!.literals, [lit]);
    const over = everySplit(`a LOGIN {${LIMITS.literalBytes + 1}}\r\n`);
    assert.deepEqual(over.errors, ['literal_too_long']);
    assert.deepEqual(over.continuations, [], 'no + for a literal that will be refused');
  });

  test('huge announced literal sizes are refused without allocation', () => {
    // A marker too long to be a size fails closed, as the upstream reader does (one framing).
    assert.deepEqual(everySplit('a X {99999999999999999999}\r\n').errors, ['literal_too_long']);
    assert.deepEqual(everySplit('a X {12345678901+}\r\n').errors, ['literal_too_long']);
    assert.deepEqual(everySplit('a X {4294967295}\r\n').errors, ['literal_too_long']);
  });

  test('too many literals in one command fail', () => {
    assert.equal(everySplit('a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3\r\n').commands.length, 1);
    assert.deepEqual(everySplit('a X {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {1+}\r\n4\r\n').errors, [
      'too_many_literals',
    ]);
  });

  test('a line with no LF is bounded: it fails instead of growing', () => {
    const s = run([Buffer.alloc(10_000, 0x61)]);
    assert.deepEqual(s.errors, ['line_too_long']);
    assert.ok(s.maxBuffered <= LIMITS.lineBytes + 1);
  });

  test('input after a failure is ignored', () => {
    const s = run([Buffer.from(`${'x'.repeat(100)}\r\na NOOP\r\n`)]);
    assert.deepEqual(s.errors, ['line_too_long']);
    assert.equal(s.commands.length, 0);
  });

  test('pause() inside command() keeps the bytes behind it untouched and in order', () => {
    const got: string[] = [];
    const sp: Splitter = new Splitter(LIMITS, {
      command: (c) => {
        got.push(c.lines[0]!.toString());
        sp.pause();
      },
      continuation: () => assert.fail('no continuation while paused'),
      error: () => assert.fail('no error'),
    });
    sp.push(Buffer.from('a LOGIN u p\r\nb SELECT {3}\r\n'));
    sp.push(Buffer.from('abc\r\n'));
    assert.deepEqual(got, ['a LOGIN u p']);
    assert.ok(sp.atBoundary);
    assert.equal(sp.takePending().toString(), 'b SELECT {3}\r\nabc\r\n');
  });

  test('resume() continues with the pending bytes', () => {
    const got: string[] = [];
    const sp: Splitter = new Splitter(LIMITS, {
      command: (c) => {
        got.push(c.lines[0]!.toString());
        sp.pause();
      },
      continuation: () => {},
      error: () => assert.fail('no error'),
    });
    sp.push(Buffer.from('a NOOP\r\nb NOOP\r\nc NO'));
    sp.push(Buffer.from('OP\r\n'));
    assert.deepEqual(got, ['a NOOP']);
    sp.resume();
    assert.deepEqual(got, ['a NOOP', 'b NOOP']);
    sp.resume();
    assert.deepEqual(got, ['a NOOP', 'b NOOP', 'c NOOP']);
  });
});

/** Generated well-formed commands: text parts and literals of every kind. */
const arbText = fc.stringMatching(/^[A-Za-z0-9 ."()\\-]{0,12}$/);
const arbLiteral = fc.record({
  body: fc.uint8Array({ maxLength: LIMITS.literalBytes }).map((a) => Buffer.from(a).toString('latin1')),
  kind: fc.constantFrom('', '+', '-'),
});
const arbCommand = fc.record({
  head: arbText,
  literals: fc.array(fc.record({ lit: arbLiteral, after: arbText }), {
    maxLength: LIMITS.literalsPerCommand,
  }),
});

describe('Splitter fuzzing', () => {
  test('generated commands in random chunks come out exactly, one per command', () => {
    fc.assert(
      fc.property(
        fc.array(arbCommand, { maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (cmds, cuts) => {
          let wire = '';
          const expected = cmds.map((c) => {
            const lines = [`t ${c.head}`];
            const literals: string[] = [];
            wire += `t ${c.head}`;
            for (const { lit, after } of c.literals) {
              const marker = `{${Buffer.byteLength(lit.body, 'latin1')}${lit.kind}}`;
              lines[lines.length - 1] += marker;
              wire += `${marker}\r\n${lit.body}${after}`;
              literals.push(lit.body);
              lines.push(after);
            }
            wire += '\r\n';
            return { lines, literals };
          });
          const buf = Buffer.from(wire, 'latin1');
          const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let prev = 0;
          for (const p of points) {
            chunks.push(buf.subarray(prev, p));
            prev = p;
          }
          chunks.push(buf.subarray(prev));
          const seen = run(chunks, { ...LIMITS, lineBytes: 1024 });
          assert.deepEqual(seen.errors, []);
          assert.deepEqual(seen.commands, expected);
        },
      ),
      { numRuns: FUZZ_RUNS },
    );
  });

  test('random bytes never crash and never hold more than the limits allow', () => {
    const bound = LIMITS.lineBytes + 1 + LIMITS.literalsPerCommand * LIMITS.literalBytes;
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 20 }), (chunks) => {
        const seen = run(chunks.map((c) => Buffer.from(c)));
        assert.ok(seen.maxBuffered <= bound, `buffered ${seen.maxBuffered} > ${bound}`);
        assert.ok(seen.errors.length <= 1);
      }),
      { numRuns: FUZZ_RUNS },
    );
  });
});
