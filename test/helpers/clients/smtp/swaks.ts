import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

/**
 * swaks 20201014: AUTH LOGIN by default (PLAIN only as a fallback). `--data @file` is sent as
 * the whole DATA, LF turned into CRLF and dot-stuffed, except that a last line "." is dropped.
 * The password comes from the environment (SWAKS_OPT_*), never argv. `--tls-verify` checks
 * the chain, not the host name.
 */
export const swaks: SmtpClientDriver = {
  name: 'swaks',
  input: 'message',
  ways: ['login', 'plain'],
  defaultMechanism: 'AUTH LOGIN',
  finalNewline: 'refused',
  attaches: true,
  dropsLastDotLine: true,
  notes:
    'its DATA fix-up drops a last line that is exactly "." (taken for an end-of-data marker) and always appends its own CRLF, so a file ending with a newline gets an extra empty line (its cells send files without one); `--tls-verify` checks the certificate chain but not the host name; TLS needs Net::SSLeay (libnet-ssleay-perl)',
  version: () => versionOf('swaks', ['--version'], /\d[\d.]+/),
  async send(job) {
    const args = [
      '--server',
      job.host,
      '--port',
      String(job.port),
      job.transport === 'implicit' ? '--tls-on-connect' : '--tls',
      '--tls-verify',
      '--tls-ca-path',
      job.caFile,
      '--ehlo',
      job.ehloName,
      '--from',
      job.from,
      '--to',
      job.to,
      '--auth-user',
      job.user,
      '--auth-hide-password',
      '--suppress-data',
      '--timeout',
      String(Math.ceil(job.timeoutMs / 1000)),
    ];
    args.push('--auth', ...(job.way === 'login' ? ['LOGIN'] : job.way === 'plain' ? ['PLAIN'] : []));
    if (job.attach) {
      args.push('--header', `Subject: ${job.subject}`);
      args.push('--attach-type', job.attach.type, '--attach', `@${job.attach.file}`);
    } else {
      args.push('--data', `@${job.contentFile}`);
    }
    const r = await execClient('swaks', args, {
      env: { ...process.env, SWAKS_OPT_auth_password: job.password },
      timeoutMs: job.timeoutMs,
    });
    return { transcript: `${r.stdout.toString('utf8')}${r.stderr}`, error: failure(r, 'swaks') };
  },
};
