import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { NAME, RecordingSink, runOnPair, sessionOptions } from '../helpers/smtp-transaction.js';
import { cutAt } from '../integration/frontdoor/harness.js';

// Seeded, so a failure names a run that can be replayed (FUZZ_SEED=… FUZZ_RUNS=…).
const SEED = Number(process.env.FUZZ_SEED ?? 5321);
const RUNS = Number(process.env.FUZZ_RUNS ?? 1500);
const MAX = 2000;
const LINE_BYTES = 128;
const DELIVERED = '250 2.0.0 Delivered';
const opts = (sink: RecordingSink) =>
  sessionOptions(sink, { maxMessageBytes: MAX, maxRecipients: 4, lineBytes: LINE_BYTES, badCommands: 10 });

const bytes = (s: string) => Buffer.from(s, 'latin1');
const crlf = (s: string) => bytes(`${s}\r\n`);

/** An envelope address, mostly valid, sometimes not. */
const arbAddress = fc.oneof(
  fc.constantFrom(
    '<a@example.com>',
    '<>',
    '<"x y"@example.com>',
    '<postmaster>',
    'b@example.com',
    '<@r.example:c@example.com>',
  ),
  fc.string({ maxLength: 20 }).map((s) => `<${s}@example.com>`),
  fc.string({ maxLength: 12 }),
);

/** Message bytes: mostly text lines, with dots, bare CRs and LFs, and binary noise. */
const arbBody = fc
  .array(
    fc.oneof(
      fc.constantFrom('.', '..', '.\r', '\r', '\n', '\r\n', '\r\n.', '.\r\n', 'text', '\x00', '\xff'),
      fc.string({ maxLength: 30 }),
      fc.uint8Array({ maxLength: 30 }).map((a) => Buffer.from(a).toString('latin1')),
    ),
    { maxLength: 40 },
  )
  .map((parts) => bytes(parts.join('')));

/** What a client does to put `body` in DATA: a dot before every line that begins with one, CRLF "." CRLF after. */
function stuffed(body: Buffer): Buffer {
  const withEnd =
    body.length === 0 || body.subarray(-2).toString('latin1') === '\r\n'
      ? body
      : Buffer.concat([body, bytes('\r\n')]);
  const text = withEnd.toString('latin1').replace(/(^|\r\n)\./g, '$1..');
  return bytes(body.length === 0 ? '.\r\n' : `${text}.\r\n`);
}

/** What follows MAIL and RCPT: DATA or BDAT, well-formed or not, around the size limit. */
const arbContent: fc.Arbitrary<Buffer> = fc.oneof(
  arbBody.map((b) => Buffer.concat([crlf('DATA'), stuffed(b)])),
  fc.constant(crlf('DATA')),
  // Messages around the size limit, in lines of 100 bytes.
  fc
    .integer({ min: MAX - 150, max: MAX + 150 })
    .map((n) =>
      Buffer.concat([crlf('DATA'), bytes(`${'m'.repeat(98)}\r\n`.repeat(Math.ceil(n / 100))), crlf('.')]),
    ),
  fc
    .tuple(arbBody, fc.boolean(), fc.integer({ min: -3, max: 3 }))
    .map(([b, last, skew]) =>
      Buffer.concat([crlf(`BDAT ${Math.max(0, b.length + skew)}${last ? ' LAST' : ''}`), b]),
    ),
  fc
    .integer({ min: MAX - 5, max: MAX + 50 })
    .map((n) => Buffer.concat([crlf(`BDAT ${n} LAST`), Buffer.alloc(n, 0x61)])),
);

/** A transaction a real client would start: a valid MAIL and RCPTs, then some content. */
const arbTransaction: fc.Arbitrary<Buffer> = fc
  .tuple(fc.integer({ min: 1, max: 6 }), fc.array(arbContent, { minLength: 1, maxLength: 3 }))
  .map(([rcpts, content]) =>
    Buffer.concat([
      crlf('MAIL FROM:<a@example.com>'),
      ...Array.from({ length: rcpts }, (_, i) => crlf(`RCPT TO:<r${i}@example.com>`)),
      ...content,
    ]),
  );

/** One step of a conversation, as the bytes a client would send. */
const arbStep: fc.Arbitrary<Buffer> = fc.oneof(
  { arbitrary: arbTransaction, weight: 4 },
  arbContent,
  fc
    .constantFrom(
      'EHLO client.example',
      'HELO x',
      'RSET',
      'NOOP',
      'HELP',
      'VRFY a',
      'AUTH PLAIN',
      'STARTTLS',
      'EXPN x',
    )
    .map(crlf),
  fc
    .tuple(
      arbAddress,
      fc.constantFrom('', ' SIZE=10', ` SIZE=${MAX + 1}`, ' BODY=8BITMIME', ' BODY=BINARYMIME', ' X=1'),
    )
    .map(([a, p]) => crlf(`MAIL FROM:${a}${p}`)),
  arbAddress.map((a) => crlf(`RCPT TO:${a}`)),
  fc.integer({ min: LINE_BYTES - 3, max: LINE_BYTES + 3 }).map((n) => crlf(`NOOP ${'x'.repeat(n - 5)}`)),
  fc.string({ maxLength: 40 }).map(crlf),
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
);

/** Flips, inserts or deletes bytes at the given places. */
const arbMutations = fc.array(
  fc.tuple(fc.constantFrom('flip', 'insert', 'delete'), fc.nat(), fc.integer({ min: 0, max: 255 })),
  { maxLength: 4 },
);

function mutate(wire: Buffer, mutations: ReadonlyArray<readonly [string, number, number]>): Buffer {
  let w = wire;
  for (const [kind, at, b] of mutations) {
    if (w.length === 0) break;
    const i = at % w.length;
    if (kind === 'flip') w = Buffer.concat([w.subarray(0, i), Buffer.from([b]), w.subarray(i + 1)]);
    else if (kind === 'insert') w = Buffer.concat([w.subarray(0, i), Buffer.from([b]), w.subarray(i)]);
    else w = Buffer.concat([w.subarray(0, i), w.subarray(i + 1)]);
  }
  return w;
}

/** What must hold after any conversation, whatever the client sent (`dropped`: it vanished at the end). */
function assertSound(sink: RecordingSink, out: string, dropped = false): void {
  assert.deepEqual(sink.violations, [], 'the sink contract held');
  assert.equal(sink.open, 0, 'every accepted MAIL was released exactly once');
  assert.ok(sink.peakHeld <= MAX, `never held more than the limit (${sink.peakHeld})`);
  for (const d of sink.delivered) assert.ok(d.size <= MAX && d.envelope.recipients.length > 0);
  const lines = out === '' ? [] : out.replace(/\r\n$/, '').split('\r\n');
  assert.ok(out === '' || out.endsWith('\r\n'), 'replies end with CRLF');
  for (const l of lines) {
    assert.match(l, /^[2-5]\d\d[ -]/, `well-formed: ${JSON.stringify(l)}`);
    assert.ok(l.length <= 512, 'a reply line fits RFC 5321');
  }
  // 250 for a message only with a delivery behind it: as many as the sink received.
  // (A client that vanished may miss the reply to a message the sink already has.)
  const answered = lines.filter((l) => l === DELIVERED).length;
  if (dropped) assert.ok(answered <= sink.delivered.length);
  else assert.equal(answered, sink.delivered.length);
  const closes = lines.filter((l) => l.startsWith('221 ') || l.startsWith('421 '));
  assert.ok(
    closes.length <= 1 && (closes.length === 0 || lines.at(-1) === closes[0]),
    'nothing after the goodbye',
  );
}

describe('SMTP transaction session under random input', () => {
  test('random command streams, however chunked, with or without QUIT, the client ending or vanishing: sound, and the session always ends', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(arbStep, { maxLength: 12 }),
        fc.array(fc.nat(), { maxLength: 8 }),
        fc.boolean(),
        fc.option(fc.integer({ min: 0, max: MAX }), { nil: undefined }),
        fc.constantFrom('end' as const, 'destroy' as const),
        async (steps, cuts, quit, budget, finish) => {
          const sink = new RecordingSink();
          // Sometimes the in-flight budget refuses part-way (reply at the message's end).
          if (budget !== undefined) sink.holdBudget = budget;
          const wire = Buffer.concat([...steps, quit ? crlf('QUIT') : Buffer.alloc(0)]);
          const pieces = wire.length === 0 ? [] : cutAt(wire, cuts);
          const { out } = await runOnPair(opts(sink), pieces, 5000, finish);
          assertSound(sink, out, finish === 'destroy');
        },
      ),
      { seed: SEED, numRuns: RUNS },
    );
  });

  test('mutated conversations (bytes flipped, inserted, deleted): sound, and the session always ends', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(arbStep, { minLength: 1, maxLength: 10 }),
        arbMutations,
        fc.array(fc.nat(), { maxLength: 6 }),
        async (steps, mutations, cuts) => {
          const sink = new RecordingSink();
          const wire = mutate(Buffer.concat([...steps, crlf('QUIT')]), mutations);
          const { out } = await runOnPair(opts(sink), wire.length === 0 ? [] : cutAt(wire, cuts));
          assertSound(sink, out);
        },
      ),
      { seed: SEED + 1, numRuns: RUNS },
    );
  });

  test('complete command lines (no DATA or BDAT): exactly one reply per line until QUIT or a 421', async () => {
    const arbLine = fc.oneof(
      fc.constantFrom(
        'EHLO a',
        'NOOP',
        'RSET',
        'MAIL FROM:<a@example.com>',
        'RCPT TO:<b@example.com>',
        'HELP',
        'QUIT',
      ),
      fc
        .string({ maxLength: LINE_BYTES + 20 })
        .filter((s) => !/[\r\n]/.test(s) && !/^\s*(DATA|BDAT)/i.test(s)),
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(arbLine, { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        async (ls, cuts) => {
          const sink = new RecordingSink();
          const wire = bytes(ls.map((l) => `${l}\r\n`).join(''));
          const { out } = await runOnPair(opts(sink), wire.length === 0 ? [] : cutAt(wire, cuts));
          assertSound(sink, out);
          const finals = out.split('\r\n').filter((l) => /^\d{3} /.test(l));
          const quitAt = ls.findIndex(
            (l) => l.toUpperCase() === 'QUIT' || l.toUpperCase().startsWith('QUIT '),
          );
          const closed = finals.at(-1)?.startsWith('421 ') === true;
          if (closed) assert.ok(finals.length <= ls.length + 1);
          else
            assert.equal(finals.length, quitAt === -1 ? ls.length : quitAt + 1, JSON.stringify({ ls, out }));
        },
      ),
      { seed: SEED + 2, numRuns: RUNS },
    );
  });

  test('DATA: any message, dot-stuffed and cut anywhere, arrives byte-exact', async () => {
    await fc.assert(
      fc.asyncProperty(arbBody, fc.array(fc.nat(), { maxLength: 8 }), async (body, cuts) => {
        const sink = new RecordingSink();
        const wire = Buffer.concat([
          crlf('MAIL FROM:<a@example.com>'),
          crlf('RCPT TO:<b@example.com>'),
          crlf('DATA'),
          stuffed(body),
          crlf('QUIT'),
        ]);
        const { out } = await runOnPair(opts(sink), cutAt(wire, cuts));
        assertSound(sink, out);
        const expected =
          body.length === 0 || body.subarray(-2).toString('latin1') === '\r\n'
            ? body
            : Buffer.concat([body, bytes('\r\n')]);
        assert.deepEqual(sink.delivered[0]?.bytes, expected);
        assert.ok(out.endsWith(`${DELIVERED}\r\n221 2.0.0 ${NAME} closing connection\r\n`), out);
      }),
      { seed: SEED + 3, numRuns: RUNS },
    );
  });

  test('BDAT: any message in any chunk sizes, cut anywhere, arrives byte-exact', async () => {
    await fc.assert(
      fc.asyncProperty(
        arbBody,
        fc.array(fc.nat(), { maxLength: 4 }),
        fc.array(fc.nat(), { maxLength: 8 }),
        async (body, splits, cuts) => {
          const sink = new RecordingSink();
          const points = [...new Set(splits.map((s) => s % (body.length + 1)))].sort((a, b) => a - b);
          const chunks: Buffer[] = [];
          let prev = 0;
          for (const p of [...points, body.length]) {
            chunks.push(body.subarray(prev, p));
            prev = p;
          }
          const wire = Buffer.concat([
            crlf('MAIL FROM:<a@example.com>'),
            crlf('RCPT TO:<b@example.com>'),
            ...chunks.flatMap((c, i) => [
              crlf(`BDAT ${c.length}${i === chunks.length - 1 ? ' LAST' : ''}`),
              c,
            ]),
            crlf('QUIT'),
          ]);
          const { out } = await runOnPair(opts(sink), cutAt(wire, cuts));
          assertSound(sink, out);
          assert.deepEqual(sink.delivered[0]?.bytes, body);
        },
      ),
      { seed: SEED + 4, numRuns: RUNS },
    );
  });
});
