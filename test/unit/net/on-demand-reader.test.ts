import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { type TestContext, test } from 'node:test';
import fc from 'fast-check';
import { type FailureDetail, ProxyError } from '../../../src/errors.js';
import { LineFramer, OnDemandReader } from '../../../src/net/on-demand-reader.js';
import { until, withDeadline } from '../../helpers/deadline.js';

/** A grammar made up for these tests: a block is its lines up to a "." line; in 'line' mode one line is a reply. */
type Mode = 'block' | 'line';
interface Block {
  readonly lines: readonly string[];
  /** Bytes on the wire, line ends included. */
  readonly wire: number;
}

const breach = (detail: FailureDetail, what: string) =>
  new ProxyError('protocol_error', `test reply: ${what}`, { detail });

/** What a breach of the test grammar or its limits looks like. */
const breachOf = (detail: FailureDetail, what: string) => ({
  reason: 'protocol_error',
  detail,
  message: `test reply: ${what}`,
});

class BlockParser extends LineFramer<Block, Mode> {
  private lines: string[] = [];
  private wire = 0;

  constructor(lineBytes: number) {
    super(lineBytes, breach);
  }

  protected line(line: Buffer, wireBytes: number, mode: Mode): Block | undefined {
    const text = line.toString('latin1');
    if (text.startsWith('!')) throw breach('unexpected_response', 'not a block line');
    if (text.startsWith('?')) throw new TypeError('a grammar bug');
    this.wire += wireBytes;
    if (text !== '.') this.lines.push(text);
    if (text !== '.' && mode === 'block') return undefined;
    const done = { lines: this.lines, wire: this.wire };
    this.lines = [];
    this.wire = 0;
    return done;
  }
}

class BlockReader extends OnDemandReader<Block, Mode> {
  constructor(
    socket: PassThrough | Socket,
    opts: { lineBytes?: number; unreadBytes?: number; initial?: Buffer } = {},
  ) {
    super(socket, new BlockParser(opts.lineBytes ?? 64), {
      unreadBytes: opts.unreadBytes ?? 1024,
      noun: 'block',
      breach,
      ...(opts.initial ? { initial: opts.initial } : {}),
    });
  }
}

const STREAM = 'a\r\nb\n.\r\nsingle\r\n\r\n.\n';
const READS: Mode[] = ['block', 'line', 'block'];
const EXPECTED: Block[] = [
  { lines: ['a', 'b'], wire: 3 + 2 + 3 },
  { lines: ['single'], wire: 8 },
  { lines: [''], wire: 2 + 2 },
];

async function readAll(chunks: Buffer[], reads: readonly Mode[]): Promise<{ got: Block[]; rest: string }> {
  const s = new PassThrough();
  const reader = new BlockReader(s);
  const got: Block[] = [];
  const pending = (async () => {
    for (const mode of reads) got.push(await reader.read(mode, 1000));
  })();
  for (const c of chunks) s.write(c);
  await pending;
  return { got, rest: reader.detach().toString('latin1') };
}

/**
 * A client socket to a loopback server that runs `serve` once the client says "go" (so the
 * client's reader is listening first); everything is closed after the test.
 */
async function loopback(t: TestContext, serve: (peer: Socket) => void): Promise<Socket> {
  const peers: Socket[] = [];
  const server = createServer((peer) => {
    peers.push(peer);
    peer.once('data', () => serve(peer));
  });
  t.after(() => {
    for (const p of peers) p.destroy();
    server.close();
  });
  server.listen(0, '127.0.0.1');
  await withDeadline(once(server, 'listening'), 2000, 'listening');
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => client.destroy());
  await withDeadline(once(client, 'connect'), 2000, 'connect');
  return client;
}

test('replies fed whole, byte by byte and split at every offset read the same; the rest stays raw', async () => {
  const all = Buffer.from(`${STREAM}TRAILING`);
  assert.deepEqual(await readAll([all], READS), { got: EXPECTED, rest: 'TRAILING' });
  assert.deepEqual(
    await readAll(
      [...all].map((b) => Buffer.from([b])),
      READS,
    ),
    { got: EXPECTED, rest: 'TRAILING' },
  );
  for (let i = 1; i < all.length; i++) {
    const r = await readAll([all.subarray(0, i), all.subarray(i)], READS);
    assert.deepEqual(r, { got: EXPECTED, rest: 'TRAILING' }, `split at ${i}`);
  }
});

test('a line exactly at the limit parses; one byte over fails with line_too_long, before its LF too', async () => {
  const at = new BlockParser(8).parse(Buffer.from('12345678\r\n'), 'line');
  assert.deepEqual(at, { value: { lines: ['12345678'], wire: 10 }, end: 10 });
  assert.throws(
    () => new BlockParser(8).parse(Buffer.from('123456789\r\n'), 'line'),
    breachOf('line_too_long', 'line too long'),
  );
  // One byte of slack for a CR still to come, then it fails instead of buffering on.
  assert.equal(new BlockParser(8).parse(Buffer.from('123456789'), 'line'), undefined);
  assert.throws(() => new BlockParser(8).parse(Buffer.from('1234567890'), 'line'), {
    detail: 'line_too_long',
  });

  const s = new PassThrough();
  const reader = new BlockReader(s, { lineBytes: 8 });
  const p = reader.read('block', 1000);
  s.write('12345678\r\n123');
  s.write('456789\n.\n');
  await assert.rejects(p, { reason: 'protocol_error', detail: 'line_too_long' });
  assert.equal(reader.failed, true);
});

test('unread bytes are bounded while nobody reads: exactly at the limit is held, one more fails', async () => {
  const s = new PassThrough();
  const reader = new BlockReader(s, { unreadBytes: 16 });
  s.write(Buffer.alloc(16, 0x61));
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.pendingBytes, 16);
  assert.equal(reader.failed, false);
  s.write('b');
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.failed, true);
  await assert.rejects(reader.read('line', 1000), breachOf('message_too_long', 'unread flood'));
});

test('each read has its own deadline; a timeout mid-reply keeps what was read for the next read', async () => {
  const s = new PassThrough();
  const reader = new BlockReader(s);
  await assert.rejects(reader.read('block', 20), {
    reason: 'timeout',
    detail: 'response_timeout',
    message: 'upstream block timed out',
  });
  s.write('a\r\nb');
  await assert.rejects(reader.read('block', 20), { reason: 'timeout' });
  assert.equal(reader.pendingBytes, 4);
  assert.equal(reader.failed, false);
  s.write('\r\n.\r\n');
  assert.deepEqual(await reader.read('block', 1000), { lines: ['a', 'b'], wire: 9 });
  assert.equal(reader.pendingBytes, 0);
});

test('replies received before a close are read first, then the close; a half reply comes back raw', async (t) => {
  const client = await loopback(t, (peer) => peer.end('a\r\n.\r\nb\r\n'));
  const reader = new BlockReader(client);
  client.write('go');
  assert.deepEqual(await reader.read('block', 2000), { lines: ['a'], wire: 6 });
  await assert.rejects(reader.read('block', 2000), {
    reason: 'upstream_unavailable',
    detail: 'closed',
  });
  assert.equal(reader.failed, true);
  // A failed reader stays failed.
  await assert.rejects(reader.read('line', 2000), { detail: 'closed' });
  assert.equal(reader.detach().toString(), 'b\r\n');
});

test('a reset mid-reply fails the read with socket_error and the socket error as cause', async (t) => {
  const client = await loopback(t, (peer) => {
    peer.write('a\r\n');
    // Reset once the client has the half reply in hand.
    peer.once('data', () => peer.resetAndDestroy());
  });
  const reader = new BlockReader(client);
  const read = reader.read('block', 2000);
  client.write('go');
  await until(() => reader.pendingBytes === 3, 2000, 'the half reply');
  client.write('reset');
  const err = await read.then(
    () => assert.fail('a reply was read from a reset connection'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ProxyError);
  assert.equal(err.reason, 'upstream_unavailable');
  assert.equal(err.detail, 'socket_error');
  assert.equal((err.cause as NodeJS.ErrnoException).code, 'ECONNRESET');
});

test('a breach ends the reader: nothing behind it is parsed, and its bytes come back raw', async () => {
  const s = new PassThrough();
  const reader = new BlockReader(s);
  const p = reader.read('block', 1000);
  s.write('!\r\na\r\n.\r\n');
  await assert.rejects(p, breachOf('unexpected_response', 'not a block line'));
  // The same failure again: nothing behind the breach was parsed.
  await assert.rejects(reader.read('block', 1000), breachOf('unexpected_response', 'not a block line'));
  assert.equal(reader.detach().toString(), '!\r\na\r\n.\r\n');

  // A grammar that throws something else is a breach too.
  const s2 = new PassThrough();
  const r2 = new BlockReader(s2);
  s2.write('?\n');
  await assert.rejects(r2.read('line', 1000), breachOf('unexpected_response', 'unparsable'));
});

test('one read at a time; bytes handed over at construction are read first; detach lets go of the socket', async () => {
  const s = new PassThrough();
  const reader = new BlockReader(s, { initial: Buffer.from('first\r\n') });
  assert.deepEqual(await reader.read('line', 1000), { lines: ['first'], wire: 7 });
  const p = reader.read('line', 1000);
  await assert.rejects(reader.read('line', 1000), /read called concurrently/);
  s.write('second\n');
  assert.deepEqual(await p, { lines: ['second'], wire: 7 });
  s.write('x');
  await new Promise((r) => setImmediate(r));
  assert.equal(reader.detach().toString(), 'x');
  assert.equal(s.listenerCount('data'), 0);
  assert.equal(s.listenerCount('end'), 0);
  assert.equal(s.listenerCount('error'), 0);
  assert.equal(s.isPaused(), true);
});

test('fuzz: any sequence of replies split anywhere reads to the same replies', async () => {
  const text = fc.stringMatching(/^[A-Za-z0-9 ]{0,12}$/);
  const reply = fc
    .tuple(
      fc.constantFrom<Mode>('block', 'line'),
      fc.array(text, { minLength: 1, maxLength: 4 }),
      fc.boolean(),
    )
    .map(([mode, lines, bareLf]) => {
      const eol = bareLf ? '\n' : '\r\n';
      const body = mode === 'line' ? lines.slice(0, 1) : lines;
      const wire = body.map((l) => `${l}${eol}`).join('') + (mode === 'block' ? `.${eol}` : '');
      return { mode, wire, expected: { lines: body, wire: wire.length } };
    });
  // Piece sizes taken in turn; whatever they leave is the last piece.
  const sizes = fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 12 });
  await fc.assert(
    fc.asyncProperty(sizes, fc.array(reply, { minLength: 1, maxLength: 6 }), async (cutSizes, rs) => {
      const all = Buffer.from(rs.map((r) => r.wire).join(''));
      const pieces: Buffer[] = [];
      let at = 0;
      for (const n of cutSizes) {
        if (at >= all.length) break;
        pieces.push(all.subarray(at, at + n));
        at += n;
      }
      if (at < all.length) pieces.push(all.subarray(at));
      const modes = rs.map((r) => r.mode);
      assert.deepEqual(await readAll(pieces, modes), { got: rs.map((r) => r.expected), rest: '' });
    }),
    { numRuns: 200 },
  );
});
