import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';
import { withDeadline } from '../helpers/deadline.js';

test('ensureSelfSigned creates a localhost certificate once and reuses it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cert-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const first = await ensureSelfSigned(join(dir, 'tls'));
  assert.equal(first.created, true);
  const cert = new X509Certificate(readFileSync(first.certFile));
  assert.ok(cert.checkHost('localhost'));
  assert.ok(cert.checkIP('127.0.0.1'));
  assert.equal(statSync(join(dir, 'tls')).mode & 0o777, 0o700);
  const second = await ensureSelfSigned(join(dir, 'tls'));
  assert.equal(second.created, false);
  assert.equal(readFileSync(second.certFile, 'utf8'), readFileSync(first.certFile, 'utf8'));
});

test('workers asking at once get one pair whose key matches its certificate', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cert-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // Two workers generating at once once left a certificate from one and a key from the other.
  const pairs = await Promise.all(Array.from({ length: 6 }, () => ensureSelfSigned(join(dir, 'tls'))));
  assert.equal(pairs.filter((p) => p.created).length, 1, 'made once');
  const cert = new X509Certificate(readFileSync(pairs[0]!.certFile));
  assert.ok(cert.checkPrivateKey(createPrivateKey(readFileSync(pairs[0]!.keyFile))), 'key matches');
  assert.deepEqual(
    readdirSync(join(dir, 'tls')).sort(),
    ['selfsigned.crt', 'selfsigned.key'],
    'no lock or temp left',
  );
});

test('a lock left by a process that died while making the pair is taken over', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cert-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const lock = join(dir, 'tls', 'selfsigned.lock');
  mkdirSync(lock, { recursive: true });
  const old = new Date(Date.now() - 60_000);
  utimesSync(lock, old, old);
  const pair = await withDeadline(
    ensureSelfSigned(join(dir, 'tls')),
    20_000,
    'the stale lock to be taken over',
  );
  assert.equal(pair.created, true);
});
