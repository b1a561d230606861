import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { Duplex } from 'node:stream';
import { test } from 'node:test';
import { duplexPair } from '../../../src/net/duplex-pair.js';
import { withDeadline } from '../../helpers/deadline.js';

/** Everything `s` yields until its 'end'. */
async function readAll(s: Duplex): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

test('what one end writes the other reads, in order, both ways; end on one is end on the other', async () => {
  const [a, b] = duplexPair();
  const fromA = readAll(b);
  const fromB = readAll(a);
  a.write('hello ');
  b.write('back ');
  a.end('world');
  b.end('again');
  assert.equal((await withDeadline(fromA, 2000, 'b to end')).toString(), 'hello world');
  assert.equal((await withDeadline(fromB, 2000, 'a to end')).toString(), 'back again');
});

test("a write returns false while the other end's reader is full, and 'drain' comes once it reads", async () => {
  const [a, b] = duplexPair({ highWaterMark: 1024 });
  b.pause();
  const chunk = Buffer.alloc(512, 0x61);
  let writes = 0;
  while (a.write(chunk)) {
    writes++;
    assert.ok(writes < 100, 'writes must start returning false');
  }
  // The reader's buffer (1 KiB) and the writer's (1 KiB) filled, nothing more.
  assert.ok(writes >= 2 && writes <= 4, `${writes} writes accepted before backpressure`);
  assert.ok(b.readableLength <= 1024 + chunk.length, 'the reader holds no more than its high-water mark');
  const drained = once(a, 'drain');
  let read = 0;
  b.on('data', (d: Buffer) => {
    read += d.length;
  });
  b.resume();
  await withDeadline(drained, 2000, 'drain');
  assert.equal(read, (writes + 1) * chunk.length, 'every byte written arrived');
});

test('destroying one end closes the other, and a writer blocked on it is released', async () => {
  const [a, b] = duplexPair({ highWaterMark: 16 });
  b.pause();
  while (a.write(Buffer.alloc(16))) {}
  const closedB = once(b, 'close');
  const closedA = once(a, 'close');
  a.on('error', () => {});
  b.destroy();
  await withDeadline(Promise.all([closedA, closedB]), 2000, 'both ends to close');
  assert.ok(a.destroyed && b.destroyed);
});

test('destroy with an error: the destroyed end reports it, the other end just closes', async () => {
  const [a, b] = duplexPair();
  const errors: string[] = [];
  a.on('error', (e) => errors.push(`a: ${e.message}`));
  b.on('error', (e) => errors.push(`b: ${e.message}`));
  const closed = once(b, 'close');
  a.destroy(new Error('boom'));
  await withDeadline(closed, 2000, 'the other end to close');
  assert.deepEqual(errors, ['a: boom']);
});

test('the end of a write-only stream reaches the reader after everything buffered before it', async () => {
  const [a, b] = duplexPair({ highWaterMark: 64 });
  const body = Buffer.alloc(10_000, 0x7a);
  const got = readAll(b);
  // Written faster than read: most of it waits in a's buffer when end() is called.
  a.write(body);
  a.end();
  assert.deepEqual(await withDeadline(got, 2000, 'all bytes and end'), body);
});
