import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import { onlyMaildirMessage } from '../maildir.js';
import type { Pop3ClientDriver } from './types.js';

/**
 * mpop 1.4: `auth on` picks AUTH PLAIN (no initial response); `auth user` forces USER/PASS,
 * `auth login` AUTH LOGIN. `tls_starttls on|off` is STLS or implicit TLS. Delivers to a
 * Maildir with LF line ends and a Received header of its own on top. The password comes from a
 * mode-600 file through `passwordeval`, never argv.
 */
export const mpop: Pop3ClientDriver = {
  name: 'mpop',
  transports: ['starttls', 'implicit'],
  ways: ['user', 'login'],
  defaultMechanism: 'AUTH PLAIN',
  lineEnds: 'lf',
  adds: ['Received'],
  stores: 'Maildir, CRLF → LF, its Received header prepended (`received_header off` would drop it)',
  version: () => versionOf('mpop', ['--version'], /(?<=^mpop version )\S+/m),
  async retrieve(job) {
    const maildir = join(job.workDir, 'Maildir');
    for (const d of ['cur', 'new', 'tmp']) mkdirSync(join(maildir, d), { recursive: true });
    const pass = join(job.workDir, 'password');
    writeFileSync(pass, job.password, { mode: 0o600 });
    const rc = join(job.workDir, 'mpoprc');
    const auth =
      job.way === 'user' ? 'user' : job.way === 'login' ? 'login' : job.way === 'plain' ? 'plain' : 'on';
    writeFileSync(
      rc,
      `account proxy
host ${job.host}
port ${job.port}
user ${job.user}
passwordeval cat '${pass}'
auth ${auth}
tls on
tls_starttls ${job.transport === 'implicit' ? 'off' : 'on'}
tls_trust_file ${job.caFile}
timeout ${Math.ceil(job.timeoutMs / 1000)}
keep on
only_new off
uidls_file ${join(job.workDir, 'uidls')}
delivery maildir ${maildir}
account default : proxy
`,
      { mode: 0o600 },
    );
    const r = await execClient('mpop', ['-C', rc, '--debug', '-q'], { timeoutMs: job.timeoutMs });
    return {
      message: onlyMaildirMessage(maildir),
      transcript: `${r.stdout.toString('utf8')}${r.stderr}`,
      error: failure(r, 'mpop'),
    };
  },
};
