import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LoginLimiter, USER_FACTOR } from '../../../src/accounts/limiter.js';
import { createMetrics } from '../../../src/metrics.js';

const cfg = { free_failures: 3, max_failures: 10, window_seconds: 900, max_delay_ms: 4000, max_entries: 100 };

describe('LoginLimiter', () => {
  test('attacker address: free failures, growing capped delays, then refused; others unaffected', async () => {
    const metrics = createMetrics({ defaults: false });
    const l = new LoginLimiter(cfg, { metrics });
    const delays: number[] = [];
    for (let i = 0; i < 10; i++) {
      const d = l.check('Alice', '203.0.113.9');
      delays.push(d.action === 'delay' ? d.delayMs : d.action === 'allow' ? 0 : -1);
      l.recordFailure('alice', '203.0.113.9');
    }
    assert.deepEqual(delays, [0, 0, 0, 0, 250, 500, 1000, 2000, 4000, 4000]);
    assert.deepEqual(l.check('alice', '203.0.113.9'), { action: 'refuse', scope: 'user' });
    assert.deepEqual(l.check('alice', '198.51.100.7'), { action: 'allow', delayMs: 0 });
    const text = await metrics.registry.metrics();
    assert.match(text, /limiter_actions_total\{scope="user",action="delayed"\} 6/);
    assert.match(text, /limiter_actions_total\{scope="user",action="refused"\} 1/);
  });

  test('the window expires old failures', () => {
    let now = 1_000_000;
    const l = new LoginLimiter(cfg, { now: () => now });
    for (let i = 0; i < 10; i++) l.recordFailure('bob', '192.0.2.1');
    assert.equal(l.check('bob', '192.0.2.1').action, 'refuse');
    now += 901_000;
    assert.equal(l.check('bob', '192.0.2.1').action, 'allow');
  });

  test('success clears the pair record only', () => {
    const l = new LoginLimiter(cfg);
    for (let i = 0; i < 6; i++) l.recordFailure('carol', '192.0.2.2');
    assert.equal(l.check('carol', '192.0.2.2').action, 'delay');
    l.recordSuccess('carol', '192.0.2.2');
    assert.equal(l.check('carol', '192.0.2.2').action, 'allow');
  });

  test('password spraying from one address is refused across logins', () => {
    const l = new LoginLimiter(cfg);
    for (let i = 0; i < 30; i++) l.recordFailure(`user${i}`, '192.0.2.3');
    assert.deepEqual(l.check('someone-new', '192.0.2.3'), { action: 'refuse', scope: 'address' });
    assert.equal(l.check('someone-new', '192.0.2.4').action, 'allow');
  });

  test('distributed attack on one login refuses failing addresses, never a clean one', () => {
    const l = new LoginLimiter(cfg);
    for (let i = 0; i < cfg.max_failures * USER_FACTOR; i++)
      l.recordFailure('dave', `10.0.${i >> 8}.${i & 255}`);
    assert.equal(l.check('dave', '10.0.0.5').action, 'refuse');
    assert.equal(l.check('dave', '198.51.100.50').action, 'allow');
  });

  test('memory stays bounded by max_entries', () => {
    const l = new LoginLimiter(cfg);
    for (let i = 0; i < 1000; i++) l.recordFailure(`u${i}`, `a${i}`);
    // The oldest records were evicted: u0 from a0 is clean again.
    assert.equal(l.check('u0', 'a0').action, 'allow');
  });
});
