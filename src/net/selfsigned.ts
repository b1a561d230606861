import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface CertPair {
  certFile: string;
  keyFile: string;
}

/**
 * Makes (once) a self-signed certificate with the openssl command line tool, which every
 * Debian and the official Node image ship. Returns the existing pair when already there.
 */
export async function ensureSelfSigned(
  dir: string,
  opts: { name?: string; commonName?: string; altNames?: string[]; days?: number } = {},
): Promise<CertPair & { created: boolean }> {
  const name = opts.name ?? 'selfsigned';
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  if (existsSync(certFile) && existsSync(keyFile)) return { certFile, keyFile, created: false };
  mkdirSync(dir, { recursive: true, mode: 0o700 });
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
    keyFile,
    '-out',
    certFile,
    '-days',
    String(opts.days ?? 825),
    '-subj',
    `/CN=${cn}`,
    '-addext',
    `subjectAltName=${alt.join(',')}`,
  ]);
  return { certFile, keyFile, created: true };
}
