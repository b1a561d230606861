import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { Pop3ClientDriver } from './types.js';

const SCRIPT = join(import.meta.dirname, 'poplib_client.py');
// Debian's own Python: the one whose poplib a legacy script on this kind of host would use.
const PYTHON = '/usr/bin/python3';

/** Python 3 poplib: USER/PASS (`user()`, `pass_()`); AUTH PLAIN / LOGIN through a small SASL helper in the script. */
export const poplib: Pop3ClientDriver = {
  name: 'python3 poplib',
  transports: ['starttls', 'implicit'],
  ways: ['plain', 'login'],
  defaultMechanism: 'USER/PASS',
  lineEnds: 'crlf',
  adds: [],
  stores: '`retr()` lines (no line ends) joined by CRLF',
  notes: 'has no AUTH command of its own: the forced ways send AUTH through `_shortcmd()` (about ten lines)',
  version: () => versionOf(PYTHON, ['--version'], /Python \S+/),
  async retrieve(job) {
    const out = join(job.workDir, 'message');
    const r = await execClient(
      PYTHON,
      [SCRIPT, job.host, String(job.port), job.transport, job.caFile, job.user, job.way, out],
      { env: { ...process.env, POP3_PASSWORD: job.password }, timeoutMs: job.timeoutMs },
    );
    return {
      message: existsSync(out) ? readFileSync(out) : undefined,
      transcript: `${r.stdout.toString('utf8')}${r.stderr}`,
      error: failure(r, 'poplib'),
    };
  },
};
