import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

/**
 * curl 7.88: AUTH PLAIN without an initial response (waits for `334`); `--login-options
 * AUTH=LOGIN` forces LOGIN. `--crlf` turns the file's LF into CRLF; curl dot-stuffs. The URL
 * path is its EHLO name; credentials come from a netrc file, not argv.
 */
export const curl: SmtpClientDriver = {
  name: 'curl',
  input: 'message',
  ways: ['login'],
  defaultMechanism: 'AUTH PLAIN',
  finalNewline: 'either',
  notes: 'sends the file as it is unless told `--crlf` (used here); the URL path is its EHLO name',
  version: () => versionOf('curl', ['--version'], /^curl \S+/m),
  async send(job) {
    const netrc = join(job.workDir, 'netrc');
    writeFileSync(netrc, `machine ${job.host} login ${job.user} password ${job.password}\n`, { mode: 0o600 });
    const scheme = job.transport === 'implicit' ? 'smtps' : 'smtp';
    const args = ['-sS', '-v', '--ssl-reqd', '--cacert', job.caFile, '--netrc-file', netrc, '--crlf'];
    args.push('--max-time', String(Math.ceil(job.timeoutMs / 1000)));
    if (job.way === 'login') args.push('--login-options', 'AUTH=LOGIN');
    args.push('--mail-from', job.from, '--mail-rcpt', job.to, '--upload-file', job.contentFile);
    args.push(`${scheme}://${job.host}:${job.port}/${job.ehloName}`);
    const r = await execClient('curl', args, { timeoutMs: job.timeoutMs });
    return { transcript: r.stderr, error: failure(r, 'curl') };
  },
};
