import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { Pop3ClientDriver } from './types.js';

/**
 * fetchmail 6.4 with `proto POP3`: USER/PASS by default (its POP3 SASL list has no PLAIN or
 * LOGIN); `auth password` pins it. `ssl` is implicit TLS; `sslproto` without `ssl` insists on
 * STLS. Delivers through an MDA writing one file: LF line ends, its own Received header on top.
 * Its own pid file and FETCHMAILHOME: as root the defaults would serialise parallel runs.
 */
export const fetchmail: Pop3ClientDriver = {
  name: 'fetchmail',
  transports: ['starttls', 'implicit'],
  ways: ['user'],
  defaultMechanism: 'USER/PASS',
  lineEnds: 'lf',
  adds: ['Received'],
  stores: 'MDA pipe, CRLF → LF, its Received header prepended',
  notes: 'matches DNS names only (dial `localhost`, `sslcommonname localhost`)',
  version: () => versionOf('fetchmail', ['--version'], /fetchmail release [\d.]+/),
  async retrieve(job) {
    const out = join(job.workDir, 'message');
    const rc = join(job.workDir, 'fetchmailrc');
    const tls = job.transport === 'implicit' ? 'ssl' : "sslproto 'TLS1.2+'";
    writeFileSync(
      rc,
      `set no syslog
poll ${job.host} with proto POP3 port ${job.port}${job.way === 'user' ? ' auth password' : ''}
  user '${job.user}' there with password '${job.password}' is 'root' here
  options ${tls} sslcertck sslcertfile '${job.caFile}' sslcommonname localhost keep fetchall no rewrite
  mda "/bin/sh -c 'cat > ${out}'"
`,
      { mode: 0o600 },
    );
    const r = await execClient(
      'fetchmail',
      ['-f', rc, '-N', '-v', '--nosyslog', '--pidfile', join(job.workDir, 'pid')],
      { env: { ...process.env, FETCHMAILHOME: job.workDir }, timeoutMs: job.timeoutMs },
    );
    return {
      message: existsSync(out) ? readFileSync(out) : undefined,
      transcript: `${r.stdout.toString('utf8')}${r.stderr}`,
      error: failure(r, 'fetchmail'),
    };
  },
};
