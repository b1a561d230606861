import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createMetrics } from '../../../src/metrics.js';
import { ProviderBreaker } from '../../../src/oauth/breaker.js';

function clocked(opts: { failures?: number; openMs?: number; maxOpenMs?: number } = {}) {
  let now = 1_000_000;
  const metrics = createMetrics({ defaults: false });
  const b = new ProviderBreaker({ ...opts, metrics, now: () => now });
  return {
    b,
    metrics,
    advance: (ms: number) => {
      now += ms;
    },
    now: () => now,
  };
}

test('closed until N availability failures in a row; a success in between resets the count', () => {
  const { b } = clocked({ failures: 3 });
  b.fail('m');
  b.fail('m');
  b.succeed('m');
  b.fail('m');
  b.fail('m');
  assert.equal(b.state('m'), 'closed');
  assert.deepEqual(b.acquire('m'), { kind: 'go' });
  b.fail('m');
  assert.equal(b.state('m'), 'open');
  assert.equal(b.acquire('m').kind, 'blocked');
  assert.equal(b.state('other'), 'closed', 'one provider per breaker');
});

test('after the open period exactly one probe goes out; its success closes at once', () => {
  const { b, advance } = clocked({ failures: 1, openMs: 1000 });
  b.fail('m');
  advance(999);
  assert.equal(b.acquire('m').kind, 'blocked');
  advance(1);
  assert.deepEqual(b.acquire('m'), { kind: 'probe' });
  assert.equal(b.state('m'), 'half_open');
  assert.equal(b.acquire('m').kind, 'blocked', 'only one probe at a time');
  b.succeed('m');
  assert.equal(b.state('m'), 'closed');
  assert.deepEqual(b.acquire('m'), { kind: 'go' });
});

test('a failed probe opens again for twice as long, capped', () => {
  const { b, advance, now } = clocked({ failures: 1, openMs: 1000, maxOpenMs: 3000 });
  b.fail('m');
  const waits: number[] = [];
  for (let i = 0; i < 4; i++) {
    const a = b.acquire('m');
    assert.equal(a.kind, 'blocked');
    waits.push((a as { until: number }).until - now());
    advance(waits[i]!);
    assert.equal(b.acquire('m').kind, 'probe');
    b.fail('m');
  }
  assert.deepEqual(waits, [1000, 2000, 3000, 3000]);
});

test('a Retry-After opens at once and is honoured, and only lengthens an open period', () => {
  const { b, advance } = clocked({ failures: 5, openMs: 1000 });
  b.fail('m', 10_000);
  assert.equal(b.state('m'), 'open');
  advance(5000);
  b.fail('m', 1000);
  assert.equal(
    b.acquire('m').kind,
    'blocked',
    'a shorter Retry-After from a late answer does not shorten it',
  );
  advance(5000);
  assert.equal(b.acquire('m').kind, 'probe');
});

test('state and transitions are exported per provider', async () => {
  const { b, metrics, advance } = clocked({ failures: 1, openMs: 10 });
  b.fail('m');
  advance(10);
  b.acquire('m');
  b.succeed('m');
  const text = await metrics.registry.metrics();
  assert.match(text, /imap_proxy_provider_breaker_state\{provider="m"\} 0/);
  for (const to of ['open', 'half_open', 'closed'])
    assert.match(
      text,
      new RegExp(`imap_proxy_provider_breaker_transitions_total\\{provider="m",to="${to}"\\} 1`),
    );
});
