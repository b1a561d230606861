import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type RawCommand, Splitter } from '../../../src/protocols/imap/framing.js';
import {
  type ParsedCommand,
  ParseError,
  type Token,
  tokenize,
  tokenText,
} from '../../../src/protocols/imap/tokenizer.js';
import { imapString } from '../../../src/protocols/imap/writer.js';

const LIMITS = { lineBytes: 8192, literalBytes: 8192, literalsPerCommand: 4 };
const FUZZ_RUNS = Number(process.env.FUZZ_RUNS ?? 200);

/** Wire bytes → commands through the real splitter, fed whole, byte by byte and at every split. */
function commandsOf(wire: Buffer): ParsedCommand[] {
  const parse = (chunks: Buffer[]) => {
    const out: Array<ParsedCommand | string> = [];
    const sp = new Splitter(LIMITS, {
      command: (c: RawCommand) => {
        try {
          out.push(tokenize(c));
        } catch (e) {
          if (!(e instanceof ParseError)) throw e;
          out.push(`BAD ${e.tag ?? '*'}`);
        }
      },
      continuation: () => {},
      error: (r) => out.push(`ERR ${r}`),
    });
    for (const c of chunks) sp.push(c);
    return out;
  };
  const whole = parse([wire]);
  assert.deepEqual(parse([...wire].map((b) => Buffer.from([b]))), whole);
  for (let i = 1; i < wire.length; i++)
    assert.deepEqual(parse([wire.subarray(0, i), wire.subarray(i)]), whole);
  for (const c of whole) if (typeof c === 'string') throw new Error(c);
  return whole as ParsedCommand[];
}

function one(wire: string): ParsedCommand {
  const cmds = commandsOf(Buffer.from(wire, 'utf8'));
  assert.equal(cmds.length, 1);
  return cmds[0]!;
}

function texts(args: readonly Token[]): Array<string | null> {
  return args.map(tokenText);
}

describe('tokenize', () => {
  test('tag, upper-cased command name and atoms', () => {
    const c = one('A001 login alice secret\r\n');
    assert.equal(c.tag, 'A001');
    assert.equal(c.name, 'LOGIN');
    assert.deepEqual(texts(c.args), ['alice', 'secret']);
  });

  test('quoted strings with \\\\ and \\" escapes', () => {
    const c = one('a LOGIN "al ice" "p\\"w\\\\d"\r\n');
    assert.deepEqual(texts(c.args), ['al ice', 'p"w\\d']);
  });

  test('synchronizing and non-synchronizing literals, with CRLF and quotes inside', () => {
    const c = one('a LOGIN {5}\r\nalice {6+}\r\np\r\n"x}\r\n');
    assert.deepEqual(texts(c.args), ['alice', 'p\r\n"x}']);
    assert.equal(c.args[1]!.kind === 'string' && c.args[1]!.literal, true);
  });

  test('UTF-8 in quoted strings and literals', () => {
    const pw = 'pässwörd✓';
    const c = one(`a LOGIN "jürgen@example.com" {${Buffer.byteLength(pw)}+}\r\n${pw}\r\n`);
    assert.deepEqual(texts(c.args), ['jürgen@example.com', pw]);
  });

  test('NIL and parenthesized lists (ID)', () => {
    const c = one('a ID ("name" "mutt" "version" NIL)\r\n');
    assert.equal(c.args[0]!.kind, 'list');
    const items = c.args[0]!.kind === 'list' ? c.args[0]!.items : [];
    assert.deepEqual(
      items.map((t) => t.kind),
      ['string', 'string', 'string', 'nil'],
    );
    assert.equal(one('a ID NIL\r\n').args[0]!.kind, 'nil');
    assert.deepEqual(one('a ID ()\r\n').args, [{ kind: 'list', items: [] }]);
  });

  const bad: Array<[string, string, string | undefined]> = [
    ['no tag', ' NOOP\r\n', undefined],
    ['tag with +', 'a+ NOOP\r\n', undefined],
    ['no command', 'a\r\n', 'a'],
    ['double space', 'a LOGIN  x y\r\n', 'a'],
    ['unterminated quote', 'a LOGIN "x y\r\n', 'a'],
    ['bad escape', 'a LOGIN "\\n" y\r\n', 'a'],
    ['unbalanced list', 'a ID ("x" "y"\r\n', 'a'],
    ['marker not at end', 'a LOGIN {3}x y\r\n', 'a'],
    ['invalid UTF-8 atom', 'a LOGIN \xff\xfe y\r\n', 'a'],
  ];
  for (const [name, wire, tag] of bad) {
    test(`malformed: ${name} → ParseError keeps the tag, never the data`, () => {
      const sp = new Splitter(LIMITS, {
        command: (c) => {
          assert.throws(
            () => tokenize(c),
            (e: unknown) => e instanceof ParseError && e.tag === tag && !e.message.includes('y'),
          );
        },
        continuation: () => {},
        error: () => assert.fail('splitter error'),
      });
      sp.push(Buffer.from(wire, 'latin1'));
    });
  }

  test('deeply nested lists are refused', () => {
    assert.throws(
      () => tokenize({ lines: [Buffer.from(`a ID ${'('.repeat(20)}${')'.repeat(20)}`)], literals: [] }),
      ParseError,
    );
  });
});

describe('writer + tokenizer round trip (fuzz)', () => {
  test('any UTF-8 user name and password written with imapString read back exactly', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 40 }),
        fc.string({ unit: 'binary', maxLength: 40 }),
        (u, p) => {
          const wire = Buffer.concat([
            Buffer.from('t LOGIN '),
            imapString(u),
            Buffer.from(' '),
            imapString(p),
            Buffer.from('\r\n'),
          ]);
          const sp = new Splitter(LIMITS, {
            command: (c) => assert.deepEqual(texts(tokenize(c).args), [u, p]),
            continuation: () => {},
            error: (r) => assert.fail(r),
          });
          sp.push(wire);
        },
      ),
      { numRuns: FUZZ_RUNS },
    );
  });

  test('random command lines never throw anything but ParseError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        const line = Buffer.from(bytes.filter((b) => b !== 0x0a && b !== 0x0d));
        try {
          tokenize({ lines: [line], literals: [] });
        } catch (e) {
          assert.ok(e instanceof ParseError);
        }
      }),
      { numRuns: FUZZ_RUNS },
    );
  });
});
