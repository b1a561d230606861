import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { createMetrics } from '../../../src/metrics.js';
import { type SpliceStats, splice } from '../../../src/net/splice.js';
import { withDeadline } from '../../helpers/deadline.js';
import { EchoUpstream } from './harness.js';

/** A connected pair over loopback: [the proxy's accepted socket, the user's socket]. */
async function tcpPair(): Promise<[Socket, Socket]> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await withDeadline(once(server, 'listening'), 5000, 'the listener');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const user = connect((server.address() as AddressInfo).port, '127.0.0.1');
  const [proxySide] = await withDeadline(accepted, 5000, 'the accepted connection');
  await withDeadline(once(user, 'connect'), 5000, 'the user connection');
  server.close();
  return [proxySide, user];
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Splices a fresh loopback client to the upstream listening on `port`; counts release() calls. */
async function spliceTo(
  t: { after: (fn: () => unknown) => void },
  port: number,
  buffered: Buffer,
  pipelined: Buffer,
) {
  const [client, user] = await tcpPair();
  t.after(() => user.destroy());
  const up = connect(port, '127.0.0.1');
  await withDeadline(once(up, 'connect'), 5000, 'the upstream connection');
  up.pause();
  client.pause();
  const metrics = createMetrics({ defaults: false });
  const r = { client, user, up, metrics, released: 0, done: undefined as unknown as Promise<SpliceStats> };
  r.done = splice({
    client,
    protocol: 'imap',
    upstream: { socket: up, capabilities: [], buffered },
    pipelined,
    metrics,
    release: () => {
      r.released++;
    },
  });
  return r;
}

/** Splices a fresh loopback client to a fresh echo upstream. */
async function spliceToEcho(t: { after: (fn: () => unknown) => void }, buffered: Buffer, pipelined: Buffer) {
  const echo = new EchoUpstream();
  await echo.start();
  t.after(() => echo.stop());
  return spliceTo(t, echo.port, buffered, pipelined);
}

test('splice moves megabytes both ways intact, counts bytes and releases once', async (t) => {
  const r = await spliceToEcho(t, Buffer.from('BUF'), Buffer.from('PIPE'));
  const { user, metrics, done } = r;
  const payload = randomBytes(4 * 1024 * 1024);
  const expected = Buffer.concat([Buffer.from('BUFPIPE'), payload]);
  const chunks: Buffer[] = [];
  let got = 0;
  const all = new Promise<void>((resolve) => {
    user.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (got >= expected.length) resolve();
    });
  });
  user.write(payload);
  await withDeadline(all, 60_000, 'the echoed megabytes');
  assert.equal(
    sha(Buffer.concat(chunks)),
    sha(expected),
    'upstream buffer, pipelined bytes, then the stream, in order',
  );
  user.end();
  const stats = await withDeadline(done, 10_000, 'the splice to end');
  assert.equal(stats.clientToUpstream, payload.length + 4);
  assert.equal(stats.upstreamToClient, payload.length + 7);
  assert.equal(r.released, 1);
  const text = await metrics.registry.metrics();
  assert.match(text, new RegExp(`direction="client_to_upstream"} ${payload.length + 4}\\n`));
});

test('upstream closing tears down the client side', async (t) => {
  const r = await spliceToEcho(t, Buffer.alloc(0), Buffer.alloc(0));
  const { user, up, done } = r;
  const userClosed = once(user, 'close');
  user.on('error', () => {});
  up.destroy(new Error('upstream reset'));
  await withDeadline(userClosed, 5000, 'the client side to close');
  await withDeadline(done, 5000, 'the splice to end');
  assert.equal(r.released, 1);
});

test('a live session shows its bytes at the next scrape, not only when it ends', async (t) => {
  const r = await spliceToEcho(t, Buffer.alloc(0), Buffer.alloc(0));
  const { user, metrics, done } = r;
  const payload = randomBytes(256 * 1024);
  let got = 0;
  const echoed = new Promise<void>((resolve) => {
    user.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= payload.length) resolve();
    });
  });
  user.write(payload);
  await withDeadline(echoed, 30_000, 'the echoed bytes');
  const live = await metrics.registry.metrics();
  assert.match(live, new RegExp(`direction="client_to_upstream"} ${payload.length}\\n`));
  assert.match(live, new RegExp(`direction="upstream_to_client"} ${payload.length}\\n`));
  user.end();
  await withDeadline(done, 10_000, 'the splice to end');
  const after = await metrics.registry.metrics();
  assert.match(
    after,
    new RegExp(`direction="upstream_to_client"} ${payload.length}\\n`),
    'not counted twice',
  );
});

test('the client vanishing mid-session tears the upstream down and releases once', {
  timeout: 10_000,
}, async (t) => {
  const r = await spliceToEcho(t, Buffer.alloc(0), Buffer.alloc(0));
  const { user, up, done } = r;
  const upClosed = once(up, 'close');
  user.resetAndDestroy();
  await withDeadline(upClosed, 5000, 'the upstream to close');
  const stats = await withDeadline(done, 5000, 'the splice to end');
  assert.equal(stats.clientToUpstream, 0);
  assert.equal(r.released, 1);
});

/** A 1 MiB random block, each copy stamped with its index so a lost or repeated chunk shows. */
function chunkSource(count: number): (i: number) => Buffer {
  const block = randomBytes(1024 * 1024);
  return (i) => {
    if (i >= count) throw new Error(`chunk ${i} of ${count}`);
    const c = Buffer.from(block);
    c.writeUInt32BE(i, 0);
    return c;
  };
}

test('a client that stops reading stalls the upstream sender with bounded proxy buffers; all bytes arrive once it reads again', async (t) => {
  // More than every socket buffer on the path can hold, so the sender must be held back.
  const CHUNKS = 128;
  const STALL_MS = 500;
  const BOUND = 1024 * 1024;
  const chunk = chunkSource(CHUNKS);
  const sender = createServer();
  sender.listen(0, '127.0.0.1');
  await withDeadline(once(sender, 'listening'), 5000, 'the sending upstream');
  t.after(() => sender.close());
  const accepted = once(sender, 'connection') as Promise<[Socket]>;
  const r = await spliceTo(t, (sender.address() as AddressInfo).port, Buffer.alloc(0), Buffer.alloc(0));
  const { client, user, up, done } = r;
  const [source] = await withDeadline(accepted, 5000, 'the upstream side of the splice');
  t.after(() => source.destroy());
  user.pause();

  const sent = createHash('sha256');
  let next = 0;
  let stalledAt = -1;
  /** Writes chunks until write() says stop; returns whether 'drain' then failed to come within STALL_MS. */
  const sendUntilStalled = async (): Promise<boolean> => {
    while (next < CHUNKS) {
      const c = chunk(next++);
      sent.update(c);
      if (source.write(c)) continue;
      let timer: NodeJS.Timeout | undefined;
      const drained = await Promise.race([
        once(source, 'drain').then(() => true),
        new Promise<false>((res) => {
          timer = setTimeout(() => res(false), STALL_MS);
        }),
      ]);
      clearTimeout(timer);
      if (!drained) return true;
    }
    return false;
  };
  const stalled = await withDeadline(sendUntilStalled(), 120_000, 'the sender to stall or finish');
  assert.ok(stalled, `the sender never stalled: all ${CHUNKS} MiB went out while the client read nothing`);
  stalledAt = next;
  assert.ok(stalledAt < CHUNKS);
  assert.ok(
    client.writableLength <= BOUND,
    `the proxy buffers ${client.writableLength} bytes for the client instead of pausing the upstream`,
  );
  assert.ok(up.readableLength <= BOUND, `the proxy holds ${up.readableLength} unread upstream bytes`);
  assert.ok(up.isPaused(), 'the upstream side is paused while the client does not read');

  // The client reads again: the sender drains, finishes, and every byte arrives in order.
  const got = createHash('sha256');
  let received = 0;
  const all = new Promise<void>((resolve) => {
    user.on('data', (d: Buffer) => {
      got.update(d);
      received += d.length;
      if (received >= CHUNKS * 1024 * 1024) resolve();
    });
  });
  user.resume();
  await withDeadline(once(source, 'drain'), 30_000, 'the sender to drain once the client reads');
  const rest = (async () => {
    while (next < CHUNKS) {
      const c = chunk(next++);
      sent.update(c);
      if (!source.write(c)) await withDeadline(once(source, 'drain'), 30_000, 'the sender to drain');
    }
    source.end();
  })();
  await withDeadline(Promise.all([rest, all]), 120_000, `all ${CHUNKS} MiB at the client`);
  assert.equal(received, CHUNKS * 1024 * 1024);
  assert.equal(got.digest('hex'), sent.digest('hex'), 'every byte, once, in order');
  user.end();
  const stats = await withDeadline(done, 10_000, 'the splice to end');
  assert.equal(stats.upstreamToClient, CHUNKS * 1024 * 1024);
  assert.equal(r.released, 1);
  t.diagnostic(`sender stalled after ${stalledAt} of ${CHUNKS} MiB`);
});
