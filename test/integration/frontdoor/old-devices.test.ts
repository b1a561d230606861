import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, test } from 'node:test';
import { withDeadline } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { type Frontdoor, metricValue, startFrontdoor } from './harness.js';

const NAME = 'printer-relay.test';
const GREETING = `220 ${NAME} ESMTP imap-oauth-proxy ready`;

/**
 * An old device's TLS: OpenSSL's own client, TLS 1.0 only, at security level 0 so that the
 * client is willing and any refusal is the server's. Sends `input` once connected and
 * returns what it printed and its exit code.
 */
async function oldTlsClient(
  t: { after: (fn: () => void) => void },
  port: number,
  input: string,
  starttls = false,
): Promise<{ out: string; err: string; code: number | null }> {
  const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-tls1', '-cipher', 'DEFAULT@SECLEVEL=0'];
  if (starttls) args.push('-starttls', 'smtp', '-name', 'old-printer');
  const child = spawn('openssl', [...args, '-quiet', '-crlf'], { stdio: ['pipe', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.pid !== undefined) process.kill(child.pid);
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdin.end(input);
  const [code] = (await withDeadline(once(child, 'exit'), 20_000, 'openssl s_client to finish')) as [
    number | null,
  ];
  return { out, err, code };
}

async function smtpListener(
  t: { after: (fn: () => Promise<void>) => void },
  cfg: Parameters<typeof startFrontdoor>[0],
): Promise<Frontdoor> {
  const fd = await startFrontdoor({ protocol: 'smtp', server_name: NAME, ...cfg });
  t.after(() => fd.close());
  return fd;
}

const tlsCount = (fd: Frontdoor, version: string) =>
  metricValue(fd.metrics, 'imap_proxy_tls_connections_total', {
    protocol: 'smtp',
    listener: 'test',
    version,
  });

describe('min_tls_version for old devices', () => {
  test('a TLSv1 listener accepts a TLS 1.0 client (implicit TLS) and counts the version', async (t) => {
    const fd = await smtpListener(t, { tls: 'implicit', min_tls_version: 'TLSv1' });
    const r = await oldTlsClient(t, fd.port, 'EHLO old-printer\nQUIT\n');
    const lines = r.out.split(/\r?\n/);
    assert.equal(lines[0], GREETING, r.err);
    assert.ok(lines.includes('250 HELP') && lines.includes('250-AUTH PLAIN LOGIN'), r.out);
    assert.ok(lines.includes(`221 2.0.0 ${NAME} closing connection`), r.out);
    assert.equal(await tlsCount(fd, 'TLSv1'), 1);
  });

  test('STARTTLS on a TLSv1 listener negotiates TLS 1.0 and counts it', async (t) => {
    const fd = await smtpListener(t, { tls: 'starttls', min_tls_version: 'TLSv1' });
    const r = await oldTlsClient(t, fd.port, 'EHLO old-printer\nQUIT\n', true);
    const lines = r.out.split(/\r?\n/);
    assert.ok(lines.includes('250-AUTH PLAIN LOGIN'), `AUTH offered after STARTTLS: ${r.out}${r.err}`);
    assert.ok(!lines.includes('250-STARTTLS'), r.out);
    assert.ok(lines.includes(`221 2.0.0 ${NAME} closing connection`), r.out);
    assert.equal(await tlsCount(fd, 'TLSv1'), 1);
  });

  test('a default listener refuses TLS 1.0, implicit or after STARTTLS, and counts the failed handshake', async (t) => {
    const implicit = await smtpListener(t, { tls: 'implicit' });
    const r1 = await oldTlsClient(t, implicit.port, 'EHLO old-printer\nQUIT\n');
    assert.notEqual(r1.code, 0);
    assert.doesNotMatch(r1.out, /220 /);
    assert.equal(
      await metricValue(implicit.metrics, 'imap_proxy_preauth_rejections_total', {
        protocol: 'smtp',
        reason: 'tls_handshake',
      }),
      1,
    );
    assert.equal(await tlsCount(implicit, 'TLSv1'), 0);
    const starttls = await smtpListener(t, { tls: 'starttls' });
    const r2 = await oldTlsClient(t, starttls.port, 'EHLO old-printer\nQUIT\n', true);
    assert.notEqual(r2.code, 0);
    assert.doesNotMatch(r2.out, /AUTH PLAIN/);
    assert.equal(
      await metricValue(starttls.metrics, 'imap_proxy_preauth_rejections_total', {
        protocol: 'smtp',
        reason: 'tls_handshake',
      }),
      1,
    );
    assert.equal(await tlsCount(starttls, 'TLSv1'), 0);
  });
});

describe('allow_from', () => {
  test('a client outside the list is closed before any greeting and counted not_allowed', async (t) => {
    const fd = await smtpListener(t, {
      tls: 'none',
      allow_from: ['10.0.0.0/8'],
      allow_cleartext_login: true,
    });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    c.write('EHLO old-printer\r\n');
    assert.equal(await c.readToClose(), '');
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', {
        protocol: 'smtp',
        reason: 'not_allowed',
      }),
      1,
    );
    assert.equal(fd.requests.length, 0);
  });

  test('a client on the list gets the greeting and may log in over cleartext', async (t) => {
    const fd = await smtpListener(t, {
      tls: 'none',
      allow_from: ['10.0.0.0/8', '127.0.0.1/32'],
      allow_cleartext_login: true,
    });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    assert.equal(await c.readLine(), GREETING);
    c.write(`AUTH PLAIN ${Buffer.from('\0scanner\0pw').toString('base64')}\r\n`);
    assert.equal(await c.readLine(), '235 2.7.0 Authentication successful');
    assert.equal(fd.requests[0]!.login, 'scanner');
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { reason: 'not_allowed' }),
      0,
    );
  });
});
