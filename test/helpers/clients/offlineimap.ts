import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from './exec.js';
import { onlyMaildirMessage } from './maildir.js';
import type { ClientDriver } from './types.js';

/**
 * offlineimap3: AUTHENTICATE PLAIN without SASL-IR by default; `auth_mechanisms = LOGIN`
 * forces LOGIN. Its STARTTLS path has been seen to hang on the client side (a thread waits
 * for a reply it already read), so every run is bounded by the job's timeout.
 */
export const offlineimap: ClientDriver = {
  name: 'offlineimap3',
  storesLf: true,
  ways: ['login'],
  version: async () => `offlineimap3 ${await versionOf('offlineimap', ['--version'], /\S+/)}`,
  async fetch(job) {
    const mail = join(job.workDir, 'mail');
    const rc = join(job.workDir, 'offlineimaprc');
    const implicit = job.transport === 'implicit';
    writeFileSync(
      rc,
      `[general]
accounts = a
metadata = ${join(job.workDir, 'meta')}
ui = basic

[Account a]
localrepository = L
remoterepository = R

[Repository L]
type = Maildir
localfolders = ${mail}

[Repository R]
type = IMAP
remotehost = ${job.host}
remoteport = ${job.port}
remoteuser = ${job.user}
remotepass = ${job.password}
ssl = ${implicit ? 'yes' : 'no'}
starttls = ${implicit ? 'no' : 'yes'}
sslcacertfile = ${job.caFile}
folderfilter = lambda f: f == 'INBOX'
readonly = True
${job.way === 'login' ? 'auth_mechanisms = LOGIN' : ''}
`,
      { mode: 0o600 },
    );
    const r = await execClient('offlineimap', ['-c', rc, '-o', '-d', 'imap'], { timeoutMs: job.timeoutMs });
    const transcript = `${r.stdout.toString('utf8')}${r.stderr}`;
    // offlineimap exits 0 even when a folder failed to sync; its log says so.
    const logged = /^ERROR:.*$/m.exec(transcript)?.[0];
    return {
      message: onlyMaildirMessage(join(mail, 'INBOX')),
      transcript,
      error: failure(r, 'offlineimap') ?? logged,
    };
  },
};
