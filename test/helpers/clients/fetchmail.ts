import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from './exec.js';
import type { ClientDriver } from './types.js';

/**
 * fetchmail 6.4 (its own pid file: as root the default /var/run one would serialise runs): `LOGIN "user" "pass"` by default; `auth password` pins it. Without `ssl` but
 * with `sslproto` it insists on STARTTLS. `sslcommonname` names the certificate's host.
 */
export const fetchmail: ClientDriver = {
  name: 'fetchmail',
  storesLf: true,
  ways: ['login'],
  version: () => versionOf('fetchmail', ['--version'], /fetchmail release [\d.]+/),
  async fetch(job) {
    const out = join(job.workDir, 'message');
    const rc = join(job.workDir, 'fetchmailrc');
    const tls = job.transport === 'implicit' ? 'ssl' : "sslproto 'TLS1.2+'";
    writeFileSync(
      rc,
      `set no syslog
set invisible
poll ${job.host} with proto IMAP port ${job.port}${job.way === 'login' ? ' auth password' : ''}
  user '${job.user}' there with password '${job.password}' is 'root' here
  options ${tls} sslcertck sslcertfile '${job.caFile}' sslcommonname localhost keep fetchall no rewrite
  mda "/bin/sh -c 'cat > ${out}'"
`,
      { mode: 0o600 },
    );
    const r = await execClient(
      'fetchmail',
      ['-f', rc, '-N', '-v', '-v', '--nosyslog', '--pidfile', join(job.workDir, 'pid')],
      {
        env: { ...process.env, FETCHMAILHOME: job.workDir },
        timeoutMs: job.timeoutMs,
      },
    );
    return {
      message: existsSync(out) ? readFileSync(out) : undefined,
      transcript: `${r.stdout.toString('utf8')}${r.stderr}`,
      error: failure(r, 'fetchmail'),
    };
  },
};
