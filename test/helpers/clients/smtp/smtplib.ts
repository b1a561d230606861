import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

const SCRIPT = join(import.meta.dirname, 'smtplib_client.py');
// Debian's own Python: the one whose smtplib a legacy script on this kind of host would use.
const PYTHON = '/usr/bin/python3';

/** Python 3 smtplib: login() picks AUTH PLAIN with an initial response; `auth('LOGIN', …)` forces LOGIN. */
export const smtplib: SmtpClientDriver = {
  name: 'python3 smtplib',
  input: 'message',
  ways: ['login'],
  defaultMechanism: 'AUTH PLAIN',
  finalNewline: 'either',
  notes: 'a str message is converted LF → CRLF by smtplib itself (a bytes message is sent unconverted)',
  version: () => versionOf(PYTHON, ['--version'], /Python \S+/),
  async send(job) {
    const r = await execClient(
      PYTHON,
      [
        SCRIPT,
        job.host,
        String(job.port),
        job.transport,
        job.caFile,
        job.user,
        job.way === 'login' ? 'login' : 'default',
        job.ehloName,
        job.from,
        job.to,
        job.contentFile,
      ],
      { env: { ...process.env, SMTP_PASSWORD: job.password }, timeoutMs: job.timeoutMs },
    );
    return { transcript: r.stderr, error: failure(r, 'smtplib') };
  },
};
