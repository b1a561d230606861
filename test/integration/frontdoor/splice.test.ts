import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { createMetrics } from '../../../src/metrics.js';
import { type SpliceStats, splice } from '../../../src/net/splice.js';
import { EchoUpstream } from './harness.js';

/** A connected pair over loopback: [the proxy's accepted socket, the user's socket]. */
async function tcpPair(): Promise<[Socket, Socket]> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const user = connect((server.address() as AddressInfo).port, '127.0.0.1');
  const [proxySide] = await accepted;
  await once(user, 'connect');
  server.close();
  return [proxySide, user];
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Splices a fresh loopback client to a fresh echo upstream; counts release() calls. */
async function spliceToEcho(t: { after: (fn: () => unknown) => void }, buffered: Buffer, pipelined: Buffer) {
  const echo = new EchoUpstream();
  await echo.start();
  t.after(() => echo.stop());
  const [client, user] = await tcpPair();
  t.after(() => user.destroy());
  const up = connect(echo.port, '127.0.0.1');
  await once(up, 'connect');
  up.pause();
  client.pause();
  const metrics = createMetrics({ defaults: false });
  const r = { user, up, metrics, released: 0, done: undefined as unknown as Promise<SpliceStats> };
  r.done = splice({
    client,
    upstream: { socket: up, capabilities: [], buffered },
    pipelined,
    metrics,
    release: () => {
      r.released++;
    },
  });
  return r;
}

test('splice moves megabytes both ways intact with backpressure, counts bytes and releases once', async (t) => {
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
  await all;
  assert.equal(
    sha(Buffer.concat(chunks)),
    sha(expected),
    'upstream buffer, pipelined bytes, then the stream, in order',
  );
  user.end();
  const stats = await done;
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
  await userClosed;
  await done;
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
  await echoed;
  const live = await metrics.registry.metrics();
  assert.match(live, new RegExp(`direction="client_to_upstream"} ${payload.length}\\n`));
  assert.match(live, new RegExp(`direction="upstream_to_client"} ${payload.length}\\n`));
  user.end();
  await done;
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
  await upClosed;
  const stats = await done;
  assert.equal(stats.clientToUpstream, 0);
  assert.equal(r.released, 1);
});
