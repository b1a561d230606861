import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';

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
