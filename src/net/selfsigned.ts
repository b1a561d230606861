import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CertPair {
  certFile: string;
  keyFile: string;
}

/** A lock older than this is left by a process that died while making the pair. */
const STALE_LOCK_MS = 30_000;

/**
 * Makes (once) a self-signed certificate with the openssl command line tool, which every
 * Debian and the official Node image ship. Returns the existing pair when already there.
 * Several processes (workers) may ask at once: one makes the pair under a lock directory and
 * publishes the key before the certificate, so a certificate found always has its own key.
 */
export async function ensureSelfSigned(
  dir: string,
  opts: { name?: string; commonName?: string; altNames?: string[]; days?: number } = {},
): Promise<CertPair & { created: boolean }> {
  const name = opts.name ?? 'selfsigned';
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lock = join(dir, `${name}.lock`);
  for (;;) {
    if (existsSync(certFile) && existsSync(keyFile)) return { certFile, keyFile, created: false };
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (Date.now() - lockTakenAt(lock) > STALE_LOCK_MS) rmSync(lock, { recursive: true, force: true });
      else await sleep(50);
    }
  }
  try {
    if (existsSync(certFile) && existsSync(keyFile)) return { certFile, keyFile, created: false };
    const tmp = join(dir, `.${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
    const cn = opts.commonName ?? 'localhost';
    const alt = opts.altNames ?? ['DNS:localhost', 'IP:127.0.0.1', 'IP:::1'];
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-keyout',
      `${tmp}.key`,
      '-out',
      `${tmp}.crt`,
      '-days',
      String(opts.days ?? 825),
      '-subj',
      `/CN=${cn}`,
      '-addext',
      `subjectAltName=${alt.join(',')}`,
    ]);
    renameSync(`${tmp}.key`, keyFile);
    renameSync(`${tmp}.crt`, certFile);
    return { certFile, keyFile, created: true };
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** When the lock was taken (its mtime); now when it is already gone. */
function lockTakenAt(lock: string): number {
  try {
    return statSync(lock).mtimeMs;
  } catch {
    return Date.now();
  }
}
