import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

/**
 * s-nail 14.9 (v15-compat URL syntax): AUTH PLAIN without an initial response by default,
 * `smtp-auth=login` forces LOGIN. Writes its own headers; the body goes out LF → CRLF,
 * dot-stuffed, 7bit — unless it lacks a final newline, then the whole body is re-encoded
 * quoted-printable. Matches DNS names only (dial `localhost`). Settings come from a mode-600
 * MAILRC (the password among them); `save` is unset so a failure leaves no dead.letter.
 */
export const snail: SmtpClientDriver = {
  name: 's-nail',
  input: 'body',
  ways: ['login'],
  defaultMechanism: 'AUTH PLAIN',
  finalNewline: 'required',
  notes:
    'adds Date, Message-ID, User-Agent and MIME headers of its own; a body without a final newline is sent quoted-printable, so its cells use one that ends with a newline',
  version: () => versionOf('s-nail', ['-V'], /^s-nail v[\d.]+/m),
  async send(job) {
    const home = job.workDir;
    const rc = join(home, 'mailrc');
    const scheme = job.transport === 'implicit' ? 'smtps' : 'smtp';
    writeFileSync(
      rc,
      `set v15-compat
set mta=${scheme}://${job.user}@${job.host}:${job.port}
${job.transport === 'starttls' ? 'set smtp-use-starttls' : ''}
set password-${job.user}@${job.host}:${job.port}=${job.password}
set tls-ca-file=${job.caFile}
set tls-ca-no-defaults
set from=${job.from}
set hostname=${job.ehloName}
${job.way === 'login' ? 'set smtp-auth=login' : ''}
unset save
set sendwait
`,
      { mode: 0o600 },
    );
    const r = await execClient('s-nail', ['-:u', '-vv', '-s', job.subject, '-.', job.to], {
      env: { ...process.env, HOME: home, MAILRC: rc, LC_ALL: 'C' },
      cwd: home,
      timeoutMs: job.timeoutMs,
      input: readFileSync(job.contentFile, 'utf8'),
    });
    return { transcript: `${r.stdout.toString('utf8')}${r.stderr}`, error: failure(r, 's-nail') };
  },
};
