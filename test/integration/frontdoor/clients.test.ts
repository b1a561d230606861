import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, test } from 'node:test';
import { withDeadline } from '../../helpers/deadline.js';
import { type Frontdoor, startFrontdoor, testPems } from './harness.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a real client; killed by PID if it outlives the test. */
function run(t: { after: (fn: () => void) => void }, cmd: string, args: string[]): Promise<Run> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise<Run>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
  return withDeadline(exited, 60_000, `${cmd} to exit`);
}

const PY_IMAPLIB = `
import imaplib, ssl, sys
mode, port, ca, user, pw = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
if mode == 'starttls':
    m = imaplib.IMAP4('localhost', int(port))
    m.starttls(ssl_context=ctx)
else:
    m = imaplib.IMAP4_SSL('localhost', int(port), ssl_context=ctx)
typ, _ = m.login(user, pw)
print(typ, m.noop()[0])
m.logout()
`;

async function frontdoors(t: {
  after: (fn: () => Promise<void>) => void;
}): Promise<{ starttls: Frontdoor; implicit: Frontdoor }> {
  const starttls = await startFrontdoor({ tls: 'starttls' }, { upstream: 'imap' });
  t.after(() => starttls.close());
  const implicit = await startFrontdoor({ tls: 'implicit' }, { upstream: 'imap' });
  t.after(() => implicit.close());
  return { starttls, implicit };
}

describe('real clients reach the login handler', () => {
  test('curl: AUTHENTICATE PLAIN over STARTTLS (--ssl-reqd) and over imaps://', async (t) => {
    const { starttls, implicit } = await frontdoors(t);
    const { certFile } = await testPems();
    for (const [fd, url] of [
      [starttls, `imap://localhost:${starttls.port}/`],
      [implicit, `imaps://localhost:${implicit.port}/`],
    ] as const) {
      const r = await run(t, 'curl', [
        '-sS',
        '--max-time',
        '20',
        '--ssl-reqd',
        '--cacert',
        certFile,
        '-u',
        'alice@example.com:p@ss w0rd!',
        url,
      ]);
      assert.equal(r.code, 0, `${url}: ${r.stderr}`);
      const req = fd.requests.at(-1)!;
      assert.deepEqual(
        [req.login, req.password, req.mechanism, req.client.secure],
        ['alice@example.com', 'p@ss w0rd!', 'AUTHENTICATE PLAIN', true],
        url,
      );
    }
  });

  test('Python imaplib: LOGIN over STARTTLS and over implicit TLS', async (t) => {
    const { starttls, implicit } = await frontdoors(t);
    const { certFile } = await testPems();
    const pw = 'p"a s\\s';
    for (const [fd, mode] of [
      [starttls, 'starttls'],
      [implicit, 'implicit'],
    ] as const) {
      const r = await run(t, 'python3', [
        '-c',
        PY_IMAPLIB,
        mode,
        String(fd.port),
        certFile,
        'bob@example.com',
        pw,
      ]);
      assert.equal(r.code, 0, `${mode}: ${r.stderr}`);
      assert.equal(r.stdout.trim(), 'OK OK');
      const req = fd.requests.at(-1)!;
      assert.deepEqual([req.login, req.password, req.mechanism], ['bob@example.com', pw, 'LOGIN'], mode);
    }
  });

  test('curl without TLS against a STARTTLS listener never sends the password', async (t) => {
    const { starttls } = await frontdoors(t);
    const r = await run(t, 'curl', [
      '-sS',
      '--max-time',
      '20',
      '-u',
      'alice:secret',
      `imap://localhost:${starttls.port}/`,
    ]);
    assert.notEqual(r.code, 0);
    assert.equal(starttls.requests.length, 0);
  });
});
