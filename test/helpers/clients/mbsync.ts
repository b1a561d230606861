import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from './exec.js';
import { onlyMaildirMessage } from './maildir.js';
import type { ClientDriver } from './types.js';

/** mbsync (isync 1.4): AUTHENTICATE PLAIN (authzid = authcid); `AuthMechs LOGIN` forces LOGIN. */
export const mbsync: ClientDriver = {
  name: 'mbsync',
  storesLf: true,
  ways: ['login'],
  // mbsync writes an X-TUID header into new messages to pair them up after upload.
  normalize: (m) => Buffer.from(m.toString('latin1').replace(/^X-TUID: [^\n]*\n/m, ''), 'latin1'),
  version: () => versionOf('mbsync', ['--version'], /isync \S+/),
  async fetch(job) {
    const mail = join(job.workDir, 'mail');
    const rc = join(job.workDir, 'mbsyncrc');
    mkdirSync(mail);
    writeFileSync(
      rc,
      `IMAPAccount acct
Host ${job.host}
Port ${job.port}
User ${job.user}
Pass "${job.password}"
SSLType ${job.transport === 'implicit' ? 'IMAPS' : 'STARTTLS'}
CertificateFile ${job.caFile}
${job.way === 'login' ? 'AuthMechs LOGIN' : ''}

IMAPStore remote
Account acct

MaildirStore local
Path ${mail}/
Inbox ${mail}/INBOX

Channel ch
Far :remote:
Near :local:
Patterns INBOX
Create Near
Sync Pull
SyncState *
`,
      { mode: 0o600 },
    );
    const r = await execClient('mbsync', ['-c', rc, '-D', 'ch'], { timeoutMs: job.timeoutMs });
    return {
      message: onlyMaildirMessage(join(mail, 'INBOX')),
      transcript: `${r.stdout.toString('utf8')}${r.stderr}`,
      error: failure(r, 'mbsync'),
    };
  },
};
