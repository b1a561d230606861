import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../../../src/oauth/backoff.js';
import { parseRetryAfter } from '../../../src/oauth/classify.js';
import { refreshAt } from '../../../src/oauth/refresh-window.js';

const TOKENS = { refresh_before_seconds: 300, refresh_before_fraction: 0.1 };

test('refresh point: the larger of 10 % and 5 minutes before expiry, never before half-way', () => {
  const h = 3600_000;
  assert.equal(refreshAt(0, h, TOKENS), h - 360_000); // 10 % of an hour beats 5 minutes
  assert.equal(refreshAt(0, 10 * h, TOKENS), 10 * h - 3600_000);
  assert.equal(refreshAt(0, 1200_000, TOKENS), 1200_000 - 300_000); // 5 minutes beats 10 % of 20
  assert.equal(refreshAt(0, 60_000, TOKENS), 30_000); // a 60 s token is refreshed half-way, not always
});

test('Retry-After: delta seconds and HTTP dates', () => {
  const now = Date.parse('2025-01-01T00:00:00Z');
  assert.equal(parseRetryAfter('120', now), 120_000);
  assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:01:00 GMT', now), 60_000);
  assert.equal(parseRetryAfter('Tue, 31 Dec 2024 00:00:00 GMT', now), 0);
  assert.equal(parseRetryAfter('soon', now), undefined);
  assert.equal(parseRetryAfter(null, now), undefined);
});

test('backoff doubles to its cap, honours a longer Retry-After and clears on success', () => {
  const b = new Backoff({ initialMs: 1000, maxMs: 4000 });
  assert.equal(b.fail('k', 0), 1000);
  assert.equal(b.fail('k', 0), 2000);
  assert.equal(b.fail('k', 0), 4000);
  assert.equal(b.fail('k', 0), 4000);
  assert.equal(b.fail('k', 0, 60_000), 60_000);
  assert.equal(b.blockedUntil('k', 59_999), 60_000);
  assert.equal(b.blockedUntil('other', 0), 0);
  b.succeed('k');
  assert.equal(b.blockedUntil('k', 0), 0);
});
