import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseResponse, ResponseReader, type UpstreamResponse } from '../../../src/protocols/imap/reader.js';
import { UPSTREAM_LIMITS } from '../../../src/protocols/imap/upstream-limits.js';

const STREAM =
  '* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready\r\n' +
  '+ eyJzdGF0dXMiOiI0MDEifQ==\r\n' +
  '* 1 FETCH (BODY[] {6}\r\na\r\nb\r\n UID 3)\r\n' +
  '+\r\n' +
  'A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\n';

const EXPECTED: UpstreamResponse[] = [
  { tag: '*', kind: 'OK', text: '[CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] ready' },
  { tag: '+', kind: '', text: 'eyJzdGF0dXMiOiI0MDEifQ==' },
  { tag: '*', kind: '1', text: 'FETCH (BODY[] {6}' },
  { tag: '+', kind: '', text: '' },
  { tag: 'A1', kind: 'OK', text: '[CAPABILITY IMAP4rev1 IDLE] Logged in' },
];

async function readAll(chunks: Buffer[], count: number): Promise<{ got: UpstreamResponse[]; rest: Buffer }> {
  const s = new PassThrough();
  const reader = new ResponseReader(s);
  const got: UpstreamResponse[] = [];
  const pending = (async () => {
    for (let i = 0; i < count; i++) got.push(await reader.next(1000));
  })();
  for (const c of chunks) s.write(c);
  await pending;
  return { got, rest: reader.detach() };
}

test('reader parses a stream fed whole, byte by byte, and split at every offset', async () => {
  const all = Buffer.from(STREAM + 'TRAILING');
  assert.deepEqual(await readAll([all], 5), { got: EXPECTED, rest: Buffer.from('TRAILING') });
  const bytes = [...all].map((b) => Buffer.from([b]));
  assert.deepEqual((await readAll(bytes, 5)).got, EXPECTED);
  for (let i = 1; i < all.length; i++) {
    const r = await readAll([all.subarray(0, i), all.subarray(i)], 5);
    assert.deepEqual(r.got, EXPECTED, `split at ${i}`);
    assert.equal(r.rest.toString(), 'TRAILING');
  }
});

test('a literal containing CRLF and a fake tagged line is counted, not scanned', () => {
  const buf = Buffer.from('* 1 FETCH (BODY[] {14}\r\nA1 OK fake\r\n\r\n)\r\nA1 OK real\r\n');
  const first = parseResponse(buf);
  assert.ok(first);
  assert.equal(first.response.kind, '1');
  const second = parseResponse(buf.subarray(first.end));
  assert.deepEqual(second?.response, { tag: 'A1', kind: 'OK', text: 'real' });
  // Incomplete literal: more bytes needed.
  assert.equal(parseResponse(Buffer.from('* 1 FETCH (BODY[] {14}\r\nA1 OK')), undefined);
});

test('line limit: exactly at the limit parses, one byte over fails with protocol_error', () => {
  const max = UPSTREAM_LIMITS.lineBytes;
  const head = '+ ';
  const atLimit = Buffer.from(`${head}${'x'.repeat(max - head.length)}\n`);
  assert.equal(parseResponse(atLimit)?.response.text.length, max - head.length);
  const over = Buffer.from(`${head}${'x'.repeat(max - head.length + 1)}\n`);
  assert.throws(() => parseResponse(over), { reason: 'protocol_error', detail: 'line_too_long' });
  // Without any LF yet, an over-long partial line fails too rather than buffering forever
  // (one byte of slack for the CR of a CRLF still to come, as on the client side).
  assert.equal(parseResponse(Buffer.alloc(max + 1, 0x41)), undefined);
  assert.throws(() => parseResponse(Buffer.alloc(max + 2, 0x41)), { reason: 'protocol_error' });
});

test('a 17 KB continuation line (12 KB token in base64) is read whole', () => {
  const big = Buffer.alloc(12 * 1024, 0x61).toString('base64');
  const r = parseResponse(Buffer.from(`+ ${big}\r\n`));
  assert.equal(r?.response.text, big);
});

test('reader rejects when upstream closes, and times out when it is silent', async () => {
  const s = new PassThrough();
  const reader = new ResponseReader(s);
  await assert.rejects(reader.next(20), { reason: 'timeout' });
  const p = reader.next(1000);
  s.end('* OK partial');
  await assert.rejects(p, { reason: 'upstream_unavailable', detail: 'closed' });
  assert.equal(reader.failed, true);
});

test('fuzz: any sequence of responses split anywhere parses to the same responses', async () => {
  const line = fc.stringMatching(/^[A-Za-z0-9 [\]()=+.]{0,40}$/);
  const resp = fc.oneof(
    line.map((t) => `* OK ${t}\r\n`),
    line.map((t) => `+ ${t}\r\n`),
    fc
      .tuple(line, fc.uint8Array({ maxLength: 30 }))
      .map(([t, lit]) => [`* 1 FETCH (X {${lit.length}}\r\n`, lit, `)${t}\r\n`]),
  );
  await fc.assert(
    fc.asyncProperty(
      fc.array(resp, { minLength: 1, maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 5 }),
      async (rs, cuts) => {
        const parts = rs.map((r) =>
          Array.isArray(r)
            ? Buffer.concat([
                Buffer.from(r[0] as string),
                Buffer.from(r[1] as Uint8Array),
                Buffer.from(r[2] as string),
              ])
            : Buffer.from(r),
        );
        const all = Buffer.concat(parts);
        const whole = await readAll([all], parts.length);
        const offsets = [...new Set(cuts.map((c) => c % (all.length + 1)))].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const o of [...offsets, all.length]) {
          chunks.push(all.subarray(prev, o));
          prev = o;
        }
        const split = await readAll(chunks, parts.length);
        assert.deepEqual(split.got, whole.got);
        assert.equal(split.rest.length, 0);
      },
    ),
    { numRuns: 200 },
  );
});

test('one framing, failing closed: a literal marker too long to be a size is an error, as on the client side', () => {
  assert.throws(() => parseResponse(Buffer.from('* 1 FETCH (BODY[] {12345678901}\r\n')), {
    reason: 'protocol_error',
    detail: 'literal_too_long',
  });
  // Ten digits is still a size (then bounded by the literal limit).
  assert.throws(() => parseResponse(Buffer.from('* 1 FETCH (BODY[] {1234567890}\r\n')), {
    detail: 'literal_too_long',
  });
});

test('per-response byte cap: literals that each fit but together exceed it fail closed', () => {
  const lit = 'x'.repeat(UPSTREAM_LIMITS.literalBytes);
  const parts: string[] = [];
  const n = Math.ceil(UPSTREAM_LIMITS.responseBytes / UPSTREAM_LIMITS.literalBytes) + 1;
  for (let i = 0; i < n; i++) parts.push(`* 1 FETCH (X {${lit.length}}\r\n${lit}`);
  assert.throws(() => parseResponse(Buffer.from(`${parts.join('')})\r\n`)), {
    reason: 'protocol_error',
    detail: 'message_too_long',
  });
});
