import { join } from 'node:path';
import { execClient, failure, versionOf } from './exec.js';
import type { ClientDriver } from './types.js';

const SCRIPT = join(import.meta.dirname, 'imaplib_client.py');

interface PyResult {
  login?: string;
  message_b64?: string;
  error?: string;
}

/** Python 3 imaplib: `LOGIN user "pass"` is its only built-in way, so default and forced agree. */
export const imaplib: ClientDriver = {
  name: 'python3 imaplib',
  storesLf: false,
  ways: ['login'],
  version: () => versionOf('python3', ['--version'], /Python \S+/),
  async fetch(job) {
    const mode = job.transport === 'implicit' ? 'implicit' : 'starttls';
    const r = await execClient(
      'python3',
      [SCRIPT, job.host, String(job.port), mode, job.caFile, job.user, '-', 'login', String(job.uid)],
      { env: { ...process.env, IMAP_PASSWORD: job.password, IMAPLIB_DEBUG: '1' }, timeoutMs: job.timeoutMs },
    );
    let out: PyResult = {};
    try {
      out = JSON.parse(r.stdout.toString('utf8')) as PyResult;
    } catch {}
    return {
      message: out.message_b64 ? Buffer.from(out.message_b64, 'base64') : undefined,
      transcript: r.stderr,
      error: failure(r, 'imaplib') ?? out.error,
    };
  },
};
