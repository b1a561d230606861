import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

/**
 * msmtp 1.8: AUTH PLAIN with an initial response by default, `auth login` forces LOGIN.
 * Reads the whole message on stdin, LF → CRLF, dot-stuffed, pipelines MAIL/RCPT/DATA. The
 * password is read from a mode-600 file through `passwordeval`, never argv.
 */
export const msmtp: SmtpClientDriver = {
  name: 'msmtp',
  input: 'message',
  ways: ['login'],
  defaultMechanism: 'AUTH PLAIN',
  finalNewline: 'either',
  version: () => versionOf('msmtp', ['--version'], /(?<=^msmtp version )\S+/m),
  async send(job) {
    const pass = join(job.workDir, 'password');
    writeFileSync(pass, job.password, { mode: 0o600 });
    const rc = join(job.workDir, 'msmtprc');
    writeFileSync(
      rc,
      `account proxy
host ${job.host}
port ${job.port}
domain ${job.ehloName}
from ${job.from}
auth ${job.way === 'login' ? 'login' : 'on'}
user ${job.user}
passwordeval cat '${pass}'
tls on
tls_starttls ${job.transport === 'implicit' ? 'off' : 'on'}
tls_trust_file ${job.caFile}
timeout ${Math.ceil(job.timeoutMs / 1000)}
set_from_header off
set_date_header off
account default : proxy
`,
      { mode: 0o600 },
    );
    const r = await execClient('msmtp', ['-C', rc, '--debug', '-f', job.from, '--', job.to], {
      timeoutMs: job.timeoutMs,
      input: readFileSync(job.contentFile, 'utf8'),
    });
    return { transcript: `${r.stdout.toString('utf8')}${r.stderr}`, error: failure(r, 'msmtp') };
  },
};
