import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execClient, versionOf } from './exec.js';
import type { ClientDriver, ClientJob, ClientRun } from './types.js';

/**
 * mutt / neomutt need a terminal, so each run gets its own tmux server (its own socket) with
 * one pane. Keystrokes are queued with `-e push`: open INBOX, pipe the first message raw to a
 * file, quit. The pane's shell signals a tmux channel when mutt exits; the harness waits on
 * that channel (bounded), captures the pane on failure and stops the tmux server by PID.
 * Default login is AUTHENTICATE PLAIN; `imap_authenticators="login"` (the 'sasl-login' way)
 * is answered with AUTHENTICATE LOGIN because the proxy advertises AUTH=LOGIN.
 */
function driver(bin: 'mutt' | 'neomutt'): ClientDriver {
  return {
    name: bin,
    storesLf: true,
    ways: ['sasl-login'],
    notes: `imap_authenticators="login" is answered with AUTHENTICATE LOGIN (observed), not the LOGIN command; no ${bin} setting that sends the LOGIN command to a server advertising AUTH=PLAIN was found`,
    version: () => versionOf(bin, ['-v'], bin === 'mutt' ? /^Mutt \S+/m : /^NeoMutt \S+/m),
    fetch: (job) => runUnderTmux(bin, job),
  };
}

export const mutt = driver('mutt');
export const neomutt = driver('neomutt');

async function runUnderTmux(bin: string, job: ClientJob): Promise<ClientRun> {
  const dir = job.workDir;
  const out = join(dir, 'message');
  const status = join(dir, 'status');
  const rc = join(dir, 'muttrc');
  const socket = `iop-${process.pid}-${Math.random().toString(36).slice(2, 10)}`;
  writeFileSync(
    rc,
    `set imap_user = "${job.user}"
set imap_pass = "${job.password}"
set ssl_ca_certificates_file = "${job.caFile}"
set certificate_file = "${join(dir, 'certs')}"
set ssl_starttls = yes
set ssl_force_tls = yes
set header_cache = ""
set message_cachedir = ""
set folder = "${dir}"
set pipe_decode = no
set wait_key = no
set imap_passive = no
${job.way === 'sasl-login' ? 'set imap_authenticators = "login"' : ''}
`,
    { mode: 0o600 },
  );
  const scheme = job.transport === 'implicit' ? 'imaps' : 'imap';
  const script = join(dir, 'run.sh');
  writeFileSync(
    script,
    `HOME='${dir}' ${bin} -d 2 -n -F '${rc}' -f '${scheme}://${job.user}@${job.host}:${job.port}/INBOX' \\
  -e 'push "<pipe-message>cat > ${out}<enter><quit>"'
echo "$?" > '${status}'
tmux -L '${socket}' wait-for -S done
`,
  );
  const tmux = (args: string[], timeoutMs = 10_000) =>
    execClient('tmux', ['-L', socket, ...args], { timeoutMs, env: { ...process.env, TMUX: '' } });
  const started = await tmux([
    '-f',
    '/dev/null',
    'new-session',
    '-d',
    '-x',
    '160',
    '-y',
    '40',
    `sh '${script}'`,
  ]);
  if (started.code !== 0)
    return { transcript: started.stderr, error: `tmux did not start: ${started.stderr}` };
  const pid = Number((await tmux(['display-message', '-p', '#{pid}'])).stdout.toString().trim());
  try {
    const waited = await tmux(['wait-for', 'done'], job.timeoutMs);
    const pane = waited.timedOut ? (await tmux(['capture-pane', '-p'])).stdout.toString('utf8') : '';
    const debug = [join(dir, '.muttdebug0'), join(dir, '.neomuttdebug0')]
      .filter((f) => existsSync(f))
      .map((f) => readFileSync(f, 'utf8'))
      .join('\n');
    const code = existsSync(status) ? readFileSync(status, 'utf8').trim() : '';
    const error = waited.timedOut
      ? `${bin} did not finish (pane below)`
      : code !== '0'
        ? `${bin} exited ${code}`
        : undefined;
    return {
      message: existsSync(out) ? readFileSync(out) : undefined,
      transcript: `${debug}${pane ? `\n--- pane ---\n${pane}` : ''}`,
      error,
    };
  } finally {
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {}
    }
  }
}
