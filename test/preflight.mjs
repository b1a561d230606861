#!/usr/bin/env node
// Before the suites run: make sure the real components they use are on this machine.
// As root it installs missing Debian packages itself (test/interop/install.sh); otherwise it
// names the one command to run.
import { spawnSync } from 'node:child_process';

const NEEDED = [
  'dovecot',
  'doveadm',
  'curl',
  'python3',
  'openssl',
  'fetchmail',
  'mbsync',
  'offlineimap',
  'mutt',
  'neomutt',
  'tmux',
  'promtool',
  'haproxy',
  'chromium',
  'pg_ctl',
  '/usr/lib/dovecot/submission',
  '/usr/lib/dovecot/pop3',
  'aiosmtpd',
  'swaks',
  'msmtp',
  's-nail',
  'mpop',
  'getmail',
  'systemd-analyze',
  'systemd-sysusers',
];
// PostgreSQL's server binaries live in /usr/lib/postgresql/<version>/bin, off PATH.
const have = (cmd) =>
  spawnSync(
    'sh',
    ['-c', `command -v ${cmd} || test -x /usr/sbin/${cmd} || ls /usr/lib/postgresql/*/bin/${cmd}`],
    {
      stdio: 'ignore',
    },
  ).status === 0;
let missing = NEEDED.filter((c) => !have(c));
if (missing.length > 0) {
  const root = process.getuid?.() === 0;
  if (!root) {
    console.error(`preflight: missing ${missing.join(', ')}; run: sudo bash test/interop/install.sh`);
    process.exit(1);
  }
  console.log(`preflight: missing ${missing.join(', ')}; installing with test/interop/install.sh`);
  const r = spawnSync('bash', ['test/interop/install.sh'], { stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
  missing = NEEDED.filter((c) => !have(c));
  if (missing.length > 0) {
    console.error(`preflight: still missing after install: ${missing.join(', ')}`);
    process.exit(1);
  }
}
console.log('preflight: test components present');
