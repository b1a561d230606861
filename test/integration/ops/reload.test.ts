import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { ensureSelfSigned } from '../../../src/net/selfsigned.js';
import { generateKeyLine } from '../../../src/store/crypto.js';
import type { ProxyProcess } from '../../bench/setup.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import type { Dovecot } from '../../helpers/dovecot.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import type { TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import type { SmtpSink } from '../../helpers/smtp-sink.js';
import {
  type Client,
  cleartext,
  cli,
  configText,
  type ListenerSpec,
  logLines,
  metric,
  openClient,
  providerFor,
  refused,
  seedUsers,
  serve,
  startUpstreams,
  type Upstreams,
  type User,
  upstreamAt,
  writeConfig,
} from './harness.js';

/**
 * SIGHUP, POST /reload and `imap-oauth-proxy reload` against `serve` as a child process with
 * its config file on disk (real OP, Dovecot for IMAP, POP3 and submission, the recording sink
 * behind submission): a rewritten file takes effect without dropping one of 26 open sessions
 * or refusing one connection on a port that stays; a broken file changes nothing; a renewed
 * certificate is served without a signal.
 */

const RELOADS = 'imap_proxy_config_reloads_total';
const CERT_RELOADS = 'imap_proxy_certificate_reloads_total';
const ADMIN_PASSWORD = randomBytes(12).toString('base64url');

let upstreams: Upstreams;
let op: TestOP;
let sink: SmtpSink;
let dovecot: Dovecot;
let dir: string;
let configFile: string;
let proxy: ProxyProcess;
let users: User[];
const ports: Record<string, number> = {};
const clients: Client[] = [];
const certs: Record<'a' | 'b' | 'live', { cert: string; key: string }> = {} as never;
const key = generateKeyLine('k1');

/** v1: before the reload. v2: plain2 added, pop3 removed, submission given STARTTLS, limits, log level and provider changed. */
function config(version: 1 | 2): string {
  const listeners: ListenerSpec[] = [
    cleartext('plain', 'imap', ports.plain!),
    {
      name: 'imaps',
      protocol: 'imap',
      port: ports.imaps!,
      tls: 'implicit',
      cert_file: certs.live.cert,
      key_file: certs.live.key,
    },
    version === 1
      ? cleartext('submission', 'smtp', ports.submission!)
      : { ...cleartext('submission', 'smtp', ports.submission!), tls: 'starttls' },
    version === 1 ? cleartext('pop3', 'pop3', ports.pop3!) : cleartext('plain2', 'imap', ports.plain2!),
  ];
  const upstreams = {
    imap: dovecot.imapsPort,
    smtp: dovecot.submissionsPort,
    pop3: dovecot.pop3sPort,
    caFile: dovecot.caFile,
  };
  return configText({
    dataDir: dir,
    key,
    level: version === 1 ? 'info' : 'debug',
    listeners,
    adminPort: ports.admin!,
    adminPassword: ADMIN_PASSWORD,
    limits: version === 1 ? {} : { preauth_idle_seconds: 45, max_connections: 5000 },
    provider:
      version === 1
        ? providerFor(op, upstreams)
        : providerFor(op, upstreams, {
            timeout_seconds: 7,
            upstream: upstreamAt(dovecot.imapPort, 'starttls', dovecot.caFile),
          }),
  });
}

async function open(
  protocol: 'imap' | 'smtp' | 'pop3',
  port: string,
  tls: boolean,
  label: string,
  user?: User,
) {
  const c = await openClient(protocol, ports[port]!, tls, label);
  clients.push(c);
  if (user) await c.login(user);
  return c;
}

/** The certificate a new TLS handshake on the imaps listener is given (SHA-256 fingerprint). */
function servedFingerprint(): Promise<string> {
  return withDeadline(
    new Promise<string>((resolve, reject) => {
      const s = tlsConnect({ host: '127.0.0.1', port: ports.imaps!, rejectUnauthorized: false });
      s.once('secureConnect', () => {
        resolve(s.getPeerCertificate().fingerprint256);
        s.destroy();
      });
      s.once('error', reject);
    }),
    5000,
    'a TLS handshake on the imaps listener',
  );
}

const fingerprintOf = (file: string) => new X509Certificate(readFileSync(file)).fingerprint256;

/** Replaces a live file by rename, as certbot's deploy step does. */
function replace(target: string, content: Buffer | string): void {
  writeFileSync(`${target}.new`, content);
  renameSync(`${target}.new`, target);
}

/** Connects to `port` over and over until `stop` is set; returns how many connections got a greeting and every failure. */
async function hammer(port: number, stop: { done: boolean }) {
  let served = 0;
  const failures: string[] = [];
  while (!stop.done) {
    try {
      const c = await withDeadline(RawImapClient.connect(port), 2000, 'a connection');
      try {
        const g = await c.readLine(2000);
        if (g.startsWith('* OK')) served++;
        else failures.push(`greeting: ${g}`);
      } finally {
        c.close();
      }
    } catch (err) {
      failures.push((err as Error).message);
    }
  }
  return { served, failures };
}

async function reloadsCounted(result: string): Promise<number> {
  return metric(ports.admin!, RELOADS, { result });
}

describe('reload: SIGHUP, POST /reload and the reload command on a running serve', () => {
  before(async () => {
    upstreams = await startUpstreams();
    ({ op, sink, dovecot } = upstreams);
    dir = mkdtempSync(join(tmpdir(), 'iop-reload-'));
    for (const name of ['plain', 'imaps', 'submission', 'pop3', 'plain2', 'admin'])
      ports[name] = await freePort();
    for (const which of ['a', 'b'] as const) {
      const pair = await ensureSelfSigned(join(dir, `cert-${which}`), { name: 'imaps' });
      certs[which] = { cert: pair.certFile, key: pair.keyFile };
    }
    certs.live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    copyFileSync(certs.a.cert, certs.live.cert);
    copyFileSync(certs.a.key, certs.live.key);
    configFile = join(dir, 'config.yaml');
    writeConfig(configFile, config(1));
    users = await seedUsers(configFile, op, 6);
    proxy = await serve(configFile);
  });

  after(async () => {
    for (const c of clients) c.close();
    await proxy?.stop(5000);
    await upstreams?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('SIGHUP applies a rewritten file: all 26 sessions go on, the kept port never refuses, added and removed listeners, log level', async () => {
    const spliced: Client[] = [];
    for (let i = 0; i < 5; i++) {
      const u = users[i]!;
      spliced.push(await open('imap', 'plain', false, `imap plain #${i}`, u));
      spliced.push(await open('imap', 'imaps', true, `imap imaps #${i}`, u));
      spliced.push(await open('smtp', 'submission', false, `smtp #${i}`, u));
      // POP3 locks a mailbox per session: one user each.
      spliced.push(await open('pop3', 'pop3', false, `pop3 #${i}`, u));
    }
    const preauth = [
      await open('imap', 'plain', false, 'imap plain before login'),
      await open('imap', 'imaps', true, 'imap imaps before login'),
      await open('smtp', 'submission', false, 'smtp before login #1'),
      await open('smtp', 'submission', false, 'smtp before login #2'),
      await open('pop3', 'pop3', false, 'pop3 before login'),
    ];
    // The active session: a 2 MiB message, half sent before the reload, half after.
    const body = Buffer.from(
      Array.from({ length: 32_768 }, (_, i) => `line ${i} ${'x'.repeat(52)}\r\n`).join(''),
    );
    const active: SmtpClient = await connectSmtp({
      host: '127.0.0.1',
      port: ports.submission!,
      tls: 'none',
      timeoutMs: 10_000,
    });
    const ehloBefore = await active.ehlo('active.example');
    assert.equal(ehloBefore.lines.includes('STARTTLS'), false, 'cleartext listener: no STARTTLS yet');
    const auth = Buffer.from(`\0${users[5]!.login}\0${users[5]!.password}`).toString('base64');
    assert.equal((await active.command(`AUTH PLAIN ${auth}`)).code, 235);
    assert.equal((await active.command('MAIL FROM:<sender@example.com>')).code, 250);
    assert.equal((await active.command('RCPT TO:<rcpt@example.com>')).code, 250);
    assert.equal((await active.command('DATA')).code, 354);
    const half = Math.floor(body.length / 2);
    active.send(body.subarray(0, half));
    assert.equal(logLines(proxy, 'upstream authenticated').length, 0, 'no debug lines at level info');

    const stop = { done: false };
    const loop = hammer(ports.plain!, stop);
    await new Promise((r) => setTimeout(r, 200));
    writeConfig(configFile, config(2));
    process.kill(proxy.pid, 'SIGHUP');
    await until(() => logLines(proxy, 'config reloaded').length === 1, 30_000, 'the reload to be logged', 20);
    await new Promise((r) => setTimeout(r, 200));
    stop.done = true;
    const { served, failures } = await loop;
    assert.deepEqual(failures, [], 'the plain listener never refused or failed a connection');
    assert.ok(served >= 5, `connections kept coming during the reload (${served})`);

    active.send(body.subarray(half));
    const done = await active.command('.', 30_000);
    assert.equal(done.code, 250, done.text);
    const [message] = await sink.waitFor(1, 10_000);
    assert.ok(message, 'the sink has the message');
    assert.deepEqual(
      message.data.subarray(message.data.length - body.length),
      body,
      'delivered byte for byte',
    );
    active.close();

    for (const c of spliced) await c.check();
    for (const c of preauth) {
      await c.login(users[5]!);
      await c.check();
    }
    assert.ok(logLines(proxy, 'upstream authenticated').length > 0, 'debug lines after the level changed');

    const added = await open('imap', 'plain2', false, 'added listener', users[0]);
    await added.check();
    assert.equal(await refused(ports.pop3!), true, 'the removed listener takes no new connections');
    const fresh = await connectSmtp({ host: '127.0.0.1', port: ports.submission!, tls: 'none' });
    const ehloAfter = await fresh.ehlo('fresh.example');
    fresh.close();
    assert.ok(ehloAfter.lines.includes('STARTTLS'), `submission now offers STARTTLS: ${ehloAfter.text}`);
    assert.equal(await reloadsCounted('success'), 1);
    assert.equal(await reloadsCounted('invalid'), 0);
  });

  test('a file that does not validate changes nothing: the log names file and line, counted invalid', async () => {
    const good = config(2);
    const lines = good.split('\n');
    const at = lines.findIndex((l) => l.includes('"level": "debug"'));
    assert.ok(at >= 0);
    lines[at] = lines[at]!.replace('"debug"', '"loud"');
    writeConfig(configFile, lines.join('\n'));
    process.kill(proxy.pid, 'SIGHUP');
    const refusedMsg = 'reload refused: the config does not validate; the running config stays';
    await until(() => logLines(proxy, refusedMsg).length === 1, 15_000, 'the refusal to be logged', 20);
    const [entry] = logLines(proxy, refusedMsg);
    const problems = ((entry?.problems ?? []) as string[]).join('\n');
    assert.ok(problems.includes(`${configFile}:${at + 1}:`), `file:line in the log: ${problems}`);
    assert.match(problems, /log\.level/);
    assert.equal(await reloadsCounted('invalid'), 1);
    assert.equal(await reloadsCounted('success'), 1);
    // Still the old (v2) config: plain2 serves, pop3 stays closed, sessions answer.
    const c = await open('imap', 'plain2', false, 'plain2 after the refused file', users[1]);
    await c.check();
    assert.equal(await refused(ports.pop3!), true);
    writeConfig(configFile, good);
  });

  test('a renewed certificate is served from the next poll without a signal; a garbage file keeps the old one', async () => {
    assert.equal(await servedFingerprint(), fingerprintOf(certs.a.cert));
    const open_ = await open('imap', 'imaps', true, 'imaps across the renewal', users[2]);
    const successBefore = await metric(ports.admin!, CERT_RELOADS, { listener: 'imaps', result: 'success' });
    replace(certs.live.cert, readFileSync(certs.b.cert));
    replace(certs.live.key, readFileSync(certs.b.key));
    const b = fingerprintOf(certs.b.cert);
    const t0 = Date.now();
    await until(
      async () => (await servedFingerprint()) === b,
      7000,
      'the renewed certificate to be served',
      200,
    );
    const took = Date.now() - t0;
    assert.ok(took < 6500, `served within one 5 s poll (${took} ms)`);
    assert.equal(
      await metric(ports.admin!, CERT_RELOADS, { listener: 'imaps', result: 'success' }),
      successBefore + 1,
    );
    await open_.check();

    const invalidBefore = await metric(ports.admin!, CERT_RELOADS, { listener: 'imaps', result: 'invalid' });
    replace(certs.live.cert, '-----BEGIN CERTIFICATE-----\nnot a certificate\n');
    await until(
      async () =>
        (await metric(ports.admin!, CERT_RELOADS, { listener: 'imaps', result: 'invalid' })) ===
        invalidBefore + 1,
      7000,
      'the garbage certificate to be counted invalid',
      200,
    );
    assert.equal(await servedFingerprint(), b, 'the previous certificate is still served');
    await open_.check();
    assert.ok(
      logLines(proxy, 'listener certificate changed on disk but cannot be used; keeping the previous one')
        .length >= 1,
    );
    replace(certs.live.cert, readFileSync(certs.b.cert));
  });

  test('POST /reload and the reload command: the admin password is required, a clear message without one', async () => {
    const before = await reloadsCounted('success');
    const res = await fetch(`http://127.0.0.1:${ports.admin}/reload`, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`admin:${ADMIN_PASSWORD}`).toString('base64')}` },
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(res.status, 200);
    const outcome = (await res.json()) as { result: string; problems: string[] };
    assert.equal(outcome.result, 'success', outcome.problems.join('\n'));

    const ok = await cli(configFile, ['reload']);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(ok.out, 'reloaded\n');
    assert.equal(await reloadsCounted('success'), before + 2);

    const wrongFile = join(dir, 'wrong-password.yaml');
    writeConfig(wrongFile, config(2).replace(ADMIN_PASSWORD, 'not-the-password'));
    const wrong = await cli(wrongFile, ['reload']);
    assert.equal(wrong.code, 1);
    assert.match(wrong.err, /reload refused by the proxy \(HTTP 401\): check admin\.admin_password/);

    const noneFile = join(dir, 'no-password.yaml');
    writeConfig(noneFile, config(2).replace(`,\n    "admin_password": "${ADMIN_PASSWORD}"`, ''));
    const none = await cli(noneFile, ['reload']);
    assert.equal(none.code, 1);
    assert.match(none.err, /admin\.admin_password is not set/);
    assert.match(none.err, /send SIGHUP/);
    assert.equal(await reloadsCounted('success'), before + 2, 'refused requests reload nothing');
    assert.doesNotMatch(proxy.output(), new RegExp(ADMIN_PASSWORD), 'the admin password is never logged');
  });
});
