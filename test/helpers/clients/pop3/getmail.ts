import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import { onlyMaildirMessage } from '../maildir.js';
import type { Pop3ClientDriver } from './types.js';

/**
 * getmail6: USER/PASS only (APOP aside). SimplePOP3SSLRetriever is implicit TLS; the plain
 * SimplePOP3Retriever never sends STLS. Its Maildir writer refuses to run as root, so
 * delivery runs as `nobody` into a Maildir that user owns. It prepends Return-Path,
 * Delivered-To and Received headers and stores LF line ends.
 */
export const getmail: Pop3ClientDriver = {
  name: 'getmail6',
  transports: ['implicit'],
  ways: [],
  defaultMechanism: 'USER/PASS',
  lineEnds: 'lf',
  adds: ['Return-Path', 'Delivered-To', 'Received'],
  stores: 'Maildir, CRLF → LF, its Return-Path, Delivered-To and Received headers prepended',
  notes: 'refuses to deliver to a Maildir as root (delivers as `user = nobody` here)',
  limitations: [
    {
      transport: 'starttls',
      why: 'getmail6 has no STLS: SimplePOP3Retriever sends USER/PASS in cleartext, which the proxy refuses with `-ERR [AUTH]` (getmail reports an operation error and exits with status 127)',
      error: 'getmail exited with status 127',
      output: /-ERR \[AUTH\] Use STLS or implicit TLS before logging in/,
    },
  ],
  version: () => versionOf('getmail', ['--version'], /getmail \S+/),
  async retrieve(job) {
    const maildir = join(job.workDir, 'Maildir');
    for (const d of ['cur', 'new', 'tmp']) mkdirSync(join(maildir, d), { recursive: true });
    // The delivering child runs as nobody: it must reach and write the Maildir.
    chmodSync(job.workDir, 0o755);
    const { uid, gid } = nobody();
    for (const d of ['', 'cur', 'new', 'tmp']) chownSync(join(maildir, d), uid, gid);
    const pass = join(job.workDir, 'password');
    writeFileSync(pass, job.password, { mode: 0o600 });
    const implicit = job.transport === 'implicit';
    writeFileSync(
      join(job.workDir, 'getmailrc'),
      `[retriever]
type = ${implicit ? 'SimplePOP3SSLRetriever' : 'SimplePOP3Retriever'}
server = ${job.host}
port = ${job.port}
username = ${job.user}
password_command = ("/bin/cat", "${pass}")
${implicit ? `ca_certs = ${job.caFile}\nssl_cert_hostname = localhost\n` : ''}
[destination]
type = Maildir
path = ${maildir}/
user = nobody

[options]
read_all = true
delete = false
verbose = 2
message_log_syslog = false
`,
      { mode: 0o600 },
    );
    const r = await execClient('getmail', ['--getmaildir', job.workDir, '--rcfile', 'getmailrc'], {
      timeoutMs: job.timeoutMs,
    });
    const message = onlyMaildirMessage(maildir);
    const transcript = `${r.stdout.toString('utf8')}${r.stderr}`;
    return {
      message,
      transcript,
      error: failure(r, 'getmail') ?? (message ? undefined : 'getmail stored nothing'),
    };
  },
};

/** nobody's uid and its primary gid, from /etc/passwd. */
function nobody(): { uid: number; gid: number } {
  const f = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('nobody:'));
  if (!f) throw new Error('getmail6 delivers as nobody, but /etc/passwd has no such user');
  const [, , uid, gid] = f.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}
