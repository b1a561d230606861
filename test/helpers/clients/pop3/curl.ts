import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { Pop3ClientDriver } from './types.js';

/**
 * curl 7.88: AUTH PLAIN (no initial response) when SASL PLAIN is advertised; `--login-options
 * AUTH=LOGIN` picks AUTH LOGIN. USER/PASS only when the server offers no SASL mechanism curl
 * knows. Writes the retrieved message to stdout as on the wire (CRLF), dot-unstuffed.
 */
export const curl: Pop3ClientDriver = {
  name: 'curl',
  transports: ['starttls', 'implicit'],
  ways: ['login', 'user'],
  defaultMechanism: 'AUTH PLAIN',
  lineEnds: 'crlf',
  adds: [],
  stores: 'stdout, CRLF as on the wire',
  limitations: [
    {
      way: 'user',
      why: 'curl 7.88.1 cannot force USER/PASS while SASL PLAIN or LOGIN is offered: `--login-options AUTH=+LOGIN` (the IMAP spelling) ends with error 3 "URL using bad/illegal format", and POP3 knows only `AUTH=+APOP` besides SASL names',
      error: 'curl exited with status 3',
      output: /^curl: \(3\) URL using bad\/illegal format/m,
    },
  ],
  version: () => versionOf('curl', ['--version'], /^curl \S+/m),
  async retrieve(job) {
    // Credentials through a netrc file, not argv (visible to every process on the machine).
    const netrc = join(job.workDir, 'netrc');
    writeFileSync(netrc, `machine ${job.host} login ${job.user} password ${job.password}\n`, { mode: 0o600 });
    const scheme = job.transport === 'implicit' ? 'pop3s' : 'pop3';
    const args = ['-sS', '-v', '--ssl-reqd', '--cacert', job.caFile, '--netrc-file', netrc];
    args.push('--max-time', String(Math.ceil(job.timeoutMs / 1000)));
    if (job.way === 'login') args.push('--login-options', 'AUTH=LOGIN');
    if (job.way === 'user') args.push('--login-options', 'AUTH=+LOGIN');
    args.push(`${scheme}://${job.host}:${job.port}/1`);
    const r = await execClient('curl', args, { timeoutMs: job.timeoutMs });
    return { message: r.stdout, transcript: r.stderr, error: failure(r, 'curl') };
  },
};
