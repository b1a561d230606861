import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  generateAppPassword,
  hashAppPassword,
  PASSWORD_ALPHABET,
  PASSWORD_BITS,
  verifyAppPassword,
} from '../../../src/accounts/passwords.js';

describe('app passwords', () => {
  test('format: groups of four from an alphabet without look-alikes, >= 100 bits', () => {
    assert.ok(PASSWORD_BITS >= 100, `only ${PASSWORD_BITS} bits`);
    assert.doesNotMatch(PASSWORD_ALPHABET, /[01ilo]/);
    const seen = new Set<string>();
    const counts = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const p = generateAppPassword();
      assert.match(p, /^[a-z2-9]{4}(-[a-z2-9]{4}){5}$/);
      assert.doesNotMatch(p, /[01ilo]/);
      seen.add(p);
      for (const ch of p.replace(/-/g, '')) counts.set(ch, (counts.get(ch) ?? 0) + 1);
    }
    assert.equal(seen.size, 2000);
    // Every symbol is used and roughly uniformly (expected ~1548 each of 48,000 draws).
    assert.equal(counts.size, PASSWORD_ALPHABET.length);
    for (const [ch, n] of counts) assert.ok(n > 1200 && n < 1900, `symbol ${ch} drawn ${n} times`);
  });

  test('hash encodes its parameters and salt; verify accepts any case, dashes or spaces', async () => {
    const p = generateAppPassword();
    const h = await hashAppPassword(p);
    assert.match(h, /^scrypt\$N=16384,r=8,p=1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    assert.ok(!h.includes(p.replace(/-/g, '')));
    assert.notEqual(await hashAppPassword(p), h);
    assert.equal(await verifyAppPassword(p, h), true);
    assert.equal(await verifyAppPassword(p.replace(/-/g, '').toUpperCase(), h), true);
    assert.equal(await verifyAppPassword(p.replace(/-/g, ' '), h), true);
    assert.equal(await verifyAppPassword(`${p}x`, h), false);
    assert.equal(await verifyAppPassword(generateAppPassword(), h), false);
    assert.equal(await verifyAppPassword(p, 'scrypt$broken'), false);
    assert.equal(await verifyAppPassword(p, h.replace('N=16384', 'N=1073741824')), false);
  });

  test('hashing does not block the event loop', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    await Promise.all([hashAppPassword('a'), hashAppPassword('b')]);
    clearInterval(timer);
    assert.ok(ticks > 3, `event loop ticked only ${ticks} times during two hashes`);
  });
});
