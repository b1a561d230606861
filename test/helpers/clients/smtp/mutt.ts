import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, failure, versionOf } from '../exec.js';
import type { SmtpClientDriver } from './types.js';

/**
 * mutt / neomutt in batch mode (`-s subject rcpt < body`, no terminal needed): they write
 * their own headers and send the body LF → CRLF, dot-stuffed, adding a final newline when it
 * lacks one. AUTH PLAIN with an initial response (authzid = user); `smtp_authenticators =
 * "login"` forces LOGIN. The password sits in a mode-600 rc file; the SMTP trace is the
 * debug log in the run's HOME.
 */
function driver(bin: 'mutt' | 'neomutt'): SmtpClientDriver {
  return {
    name: bin,
    input: 'body',
    ways: ['login'],
    defaultMechanism: 'AUTH PLAIN',
    finalNewline: 'either',
    notes: 'adds Date, Message-ID, MIME-Version, Content-Type and Content-Disposition headers of its own',
    version: () => versionOf(bin, ['-v'], bin === 'mutt' ? /^Mutt \S+/m : /^NeoMutt \S+/m),
    async send(job) {
      const home = job.workDir;
      const rc = join(home, 'muttrc');
      const scheme = job.transport === 'implicit' ? 'smtps' : 'smtp';
      writeFileSync(
        rc,
        `set smtp_url = "${scheme}://${job.user}@${job.host}:${job.port}/"
set smtp_pass = "${job.password}"
set ssl_starttls = ${job.transport === 'starttls' ? 'yes' : 'no'}
set ssl_force_tls = yes
set ssl_ca_certificates_file = "${job.caFile}"
set certificate_file = "${join(home, 'certs')}"
set from = "${job.from}"
set realname = "Interop Sender"
set use_envelope_from = yes
set hostname = "${job.ehloName}"
set record = ""
set copy = no
set tmpdir = "${home}"
set send_charset = "us-ascii"
${job.way === 'login' ? 'set smtp_authenticators = "login"' : ''}
`,
        { mode: 0o600 },
      );
      const debug = bin === 'mutt' ? ['-d', '2'] : ['-d', '2', '-l', join(home, '.neomuttdebug')];
      const r = await execClient(bin, [...debug, '-n', '-F', rc, '-s', job.subject, '--', job.to], {
        env: { ...process.env, HOME: home },
        cwd: home,
        timeoutMs: job.timeoutMs,
        input: readFileSync(job.contentFile, 'utf8'),
      });
      const log = [join(home, '.muttdebug0'), join(home, '.neomuttdebug0')]
        .filter((f) => existsSync(f))
        .map((f) => readFileSync(f, 'utf8'))
        .join('\n');
      return {
        transcript: `${log}\n--- output ---\n${r.stdout.toString('utf8')}${r.stderr}`,
        error: failure(r, bin),
      };
    },
  };
}

export const mutt = driver('mutt');
export const neomutt = driver('neomutt');
