import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { test } from 'node:test';
import { AdminAuthLimiter, limitedAuth } from '../../../src/admin/auth-limiter.js';

const setup = (over: Partial<ConstructorParameters<typeof AdminAuthLimiter>[0]> = {}) => {
  let now = 1_000_000;
  const limiter = new AdminAuthLimiter({
    maxFailures: 3,
    windowSeconds: 60,
    maxEntries: 100,
    now: () => now,
    ...over,
  });
  return { limiter, tick: (ms: number) => (now += ms) };
};

/** A request from `address`, with or without an Authorization header, and a recording response. */
function exchange(address: string, authorization?: string) {
  const req = {
    socket: { remoteAddress: address },
    headers: authorization === undefined ? {} : { authorization },
  } as unknown as IncomingMessage;
  const sent: { status?: number; headers?: Record<string, string> } = {};
  const res = {
    writeHead(status: number, headers: Record<string, string>) {
      sent.status = status;
      sent.headers = headers;
    },
    end() {},
  } as unknown as ServerResponse;
  return { req, res, sent };
}

test('after maxFailures the address waits out the window; Retry-After counts down', () => {
  const { limiter, tick } = setup();
  for (let i = 0; i < 3; i++) {
    assert.equal(limiter.retryAfter('10.0.0.1'), 0);
    limiter.recordFailure('10.0.0.1');
    tick(1000);
  }
  assert.equal(limiter.retryAfter('10.0.0.1'), 57);
  assert.equal(limiter.retryAfter('10.0.0.2'), 0, 'another address is not affected');
  tick(56_500);
  assert.equal(limiter.retryAfter('10.0.0.1'), 1);
  tick(500);
  assert.equal(limiter.retryAfter('10.0.0.1'), 0, 'window over: may try again');
  limiter.recordFailure('10.0.0.1');
  assert.equal(limiter.retryAfter('10.0.0.1'), 0, 'a new window starts from one failure');
});

test('a success clears the address; failures spread over more than the window never lock out', () => {
  const { limiter, tick } = setup();
  limiter.recordFailure('a');
  limiter.recordFailure('a');
  limiter.recordSuccess('a');
  limiter.recordFailure('a');
  limiter.recordFailure('a');
  assert.equal(limiter.retryAfter('a'), 0);
  tick(61_000);
  limiter.recordFailure('a');
  assert.equal(limiter.retryAfter('a'), 0);
});

test('memory is bounded: the least recently seen addresses are forgotten', () => {
  const { limiter } = setup({ maxEntries: 2, maxFailures: 1 });
  for (const a of ['a', 'b', 'c']) limiter.recordFailure(a);
  assert.equal(limiter.retryAfter('a'), 0);
  assert.ok(limiter.retryAfter('c') > 0);
});

test('limitedAuth: locked out → 429 with Retry-After and the secret is not checked', () => {
  const { limiter } = setup({ maxFailures: 2 });
  let checks = 0;
  const wrong = () => {
    checks++;
    return false;
  };
  assert.equal(limitedAuth(limiter, exchange('x').req, exchange('x').res, wrong), 'denied');
  const twice = exchange('x', 'Basic Zm9vOmJhcg==');
  assert.equal(limitedAuth(limiter, twice.req, twice.res, wrong), 'denied');
  assert.equal(limiter.retryAfter('x'), 0, 'the request without credentials did not count');
  assert.equal(limitedAuth(limiter, twice.req, twice.res, wrong), 'denied');
  const locked = exchange('x', 'Basic right');
  checks = 0;
  assert.equal(
    limitedAuth(limiter, locked.req, locked.res, () => {
      checks++;
      return true;
    }),
    'limited',
  );
  assert.equal(checks, 0);
  assert.equal(locked.sent.status, 429);
  assert.equal(locked.sent.headers?.['retry-after'], '60');
});
