import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from './exec.js';
import type { ClientDriver } from './types.js';

/**
 * curl 7.88: AUTHENTICATE PLAIN when AUTH=PLAIN is advertised; `AUTH=LOGIN` picks SASL LOGIN.
 * `AUTH=+LOGIN` (the LOGIN command) is newer than 7.88, which rejects it.
 */
export const curl: ClientDriver = {
  name: 'curl',
  storesLf: false,
  ways: ['sasl-login', 'login'],
  limitations: {
    login: {
      why: 'curl 7.88.1 cannot force the LOGIN command: `--login-options AUTH=+LOGIN` ends with error 3 "URL using bad/illegal format"',
      // It connects, then gives up on the option before sending a single command.
      error: 'curl exited with status 3',
      output: /^curl: \(3\) URL using bad\/illegal format/m,
    },
  },
  version: () => versionOf('curl', ['--version'], /^curl \S+/m),
  async fetch(job) {
    // Credentials through a netrc file, not argv (visible to every process on the machine).
    const netrc = join(job.workDir, 'netrc');
    writeFileSync(netrc, `machine ${job.host} login ${job.user} password ${job.password}\n`, { mode: 0o600 });
    const scheme = job.transport === 'implicit' ? 'imaps' : 'imap';
    const args = ['-sS', '-v', '--ssl-reqd', '--cacert', job.caFile, '--netrc-file', netrc];
    if (job.way === 'login') args.push('--login-options', 'AUTH=+LOGIN');
    if (job.way === 'sasl-login') args.push('--login-options', 'AUTH=LOGIN');
    args.push(`${scheme}://${job.host}:${job.port}/INBOX;UID=${job.uid}`);
    const r = await execClient('curl', args, { timeoutMs: job.timeoutMs });
    return { message: r.stdout, transcript: r.stderr, error: failure(r, 'curl') };
  },
};
