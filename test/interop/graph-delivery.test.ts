import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  curl,
  msmtp,
  type SmtpClientDriver,
  type SmtpTransport,
  swaks,
} from '../helpers/clients/smtp/index.js';
import { until } from '../helpers/deadline.js';
import { type FakeGraph, mimeRecipients, type ReceivedMessage } from '../helpers/fake-graph.js';
import { type GraphStack, startGraphStack } from '../helpers/graph-stack.js';
import type { Stack } from '../helpers/stack.js';
import { bigBody } from './smtp-harness.js';

// Real SMTP clients (swaks, msmtp, curl, Python smtplib) send through the proxy in graph mode.
// The OAuth server is a real oidc-provider; Graph is a fake (no real Graph endpoint is reachable
// here) that checks every token by introspection and keeps what it received. No installed client
// speaks BDAT; CHUNKING is driven by the scripted client in test/integration/e2e/graph.test.ts.

const RUN_MS = 120_000;

let g: GraphStack;
let graph: FakeGraph;
let s: Stack;
let dir: string;
let seq = 0;

before(async () => {
  g = await startGraphStack();
  ({ graph, stack: s } = g);
  dir = mkdtempSync(join(tmpdir(), 'iop-graph-clients-'));
});
after(async () => {
  await g?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A scanned-document-sized binary with a PDF signature: every byte value, no line structure. */
function pdf(bytes: number): Buffer {
  return Buffer.concat([Buffer.from('%PDF-1.4\n%\xe2\xe3\xcf\xd3\n', 'latin1'), randomBytes(bytes)]);
}

function base64Lines(data: Buffer): string {
  return (data.toString('base64').match(/.{1,76}/g) ?? []).join('\n');
}

interface Sent {
  marker: string;
  login: string;
  from: string;
}

/** One run of `client` as a fresh account; `content(from)` is the file it sends (LF line ends). */
async function send(
  client: SmtpClientDriver,
  transport: SmtpTransport,
  content: (from: string, marker: string) => string,
  opts: { to?: string; attach?: Buffer } = {},
): Promise<Sent> {
  const login = `g${++seq}-${client.name.replace(/\W+/g, '')}@example.com`;
  const acct = await s.addAccount(login);
  const marker = `graph-${seq}-${client.name.replace(/\W+/g, '')}`;
  const work = mkdtempSync(join(dir, 'run-'));
  const contentFile = join(work, 'message.eml');
  writeFileSync(contentFile, content(login, marker));
  let attach: { file: string; type: string } | undefined;
  if (opts.attach) {
    attach = { file: join(work, 'scan.pdf'), type: 'application/pdf' };
    writeFileSync(attach.file, opts.attach);
  }
  const run = await client.send({
    host: 'localhost',
    port: transport === 'implicit' ? s.ports.submissions : s.ports.submission,
    transport,
    caFile: s.proxyCaFile,
    user: login,
    password: acct.password,
    way: 'default',
    from: login,
    to: opts.to ?? 'bob@example.net',
    subject: marker,
    contentFile,
    ehloName: 'scanner.example.com',
    ...(attach ? { attach } : {}),
    workDir: work,
    timeoutMs: RUN_MS,
  });
  assert.equal(run.error, undefined, `${client.name}: ${run.error}\n${run.transcript.slice(-2000)}`);
  return { marker, login, from: login };
}

async function arrived(marker: string): Promise<ReceivedMessage> {
  const find = () => graph.received.find((m) => m.mime.includes(marker));
  await until(() => find() !== undefined, 10_000, `${marker} at Graph`, 50);
  return find()!;
}

async function smtpLogins(): Promise<number> {
  const v = (await s.metrics.logins.get()).values;
  return v.find((x) => x.labels.protocol === 'smtp' && x.labels.result === 'success')?.value ?? 0;
}

const crlf = (text: string) => Buffer.from(text.replace(/\r?\n/g, '\r\n'), 'latin1');
const trimEnd = (b: Buffer) => b.toString('latin1').replace(/(\r\n)+$/, '');

function plainMessage(from: string, marker: string, body: string, to = 'bob@example.net'): string {
  return `From: ${from}\nTo: ${to}\nSubject: ${marker}\nMessage-ID: <${marker}@example.com>\nMIME-Version: 1.0\n\n${body}`;
}

function scanMessage(from: string, marker: string, attachment: Buffer): string {
  const b = `----=_scan_${marker}`;
  return [
    `From: ${from}`,
    'To: bob@example.net',
    `Subject: ${marker}`,
    `Message-ID: <${marker}@example.com>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/mixed; boundary="${b}"`,
    '',
    `--${b}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'Scanned on the 3rd floor copier.',
    `--${b}`,
    'Content-Type: application/pdf; name="scan-0001.pdf"',
    'Content-Disposition: attachment; filename="scan-0001.pdf"',
    'Content-Transfer-Encoding: base64',
    '',
    base64Lines(attachment),
    `--${b}--`,
    '',
  ].join('\n');
}

describe('interop: real SMTP clients through the proxy to Microsoft Graph (graph delivery)', () => {
  test('swaks, implicit TLS: a 1 MiB message goes out with one sendMail, byte for byte', async () => {
    let sent = '';
    const r = await send(swaks, 'implicit', (from, marker) => {
      sent = plainMessage(from, marker, bigBody(false, false));
      return sent;
    });
    const got = await arrived(r.marker);
    assert.equal(got.path, 'sendMail');
    assert.equal(got.mailbox, r.login);
    assert.ok(got.mime.length > 1024 * 1024);
    assert.equal(trimEnd(got.mime), trimEnd(crlf(sent)), 'the MIME Graph got is what swaks sent');
  });

  test('swaks --attach, STARTTLS: a 10 MB scan goes through a draft and an upload session, the PDF byte-identical', async () => {
    const scan = pdf(7_500_000);
    const r = await send(swaks, 'starttls', () => '', { attach: scan });
    const got = await arrived(r.login);
    assert.equal(got.path, 'draft', 'over 4 MB: draft + upload session');
    assert.equal(got.attachments.length, 1);
    assert.equal(got.attachments[0]!.contentType.split(';')[0], 'application/pdf');
    assert.ok(got.attachments[0]!.bytes.equals(scan), 'the PDF arrived byte-identical');
    assert.ok(graph.count('upload') >= 3, 'uploaded in chunks');
  });

  test('msmtp: a 10 MB multipart message with a PDF attachment; the text part stays in the draft', async () => {
    const scan = pdf(7_600_000);
    const r = await send(msmtp, 'starttls', (from, marker) => scanMessage(from, marker, scan));
    const got = await arrived(r.marker);
    assert.equal(got.path, 'draft');
    assert.equal(got.attachments.length, 1);
    assert.equal(got.attachments[0]!.name, 'scan-0001.pdf');
    assert.ok(got.attachments[0]!.bytes.equals(scan), 'the PDF arrived byte-identical');
    assert.match(got.mime.toString('latin1'), /Scanned on the 3rd floor copier\./);
    assert.ok(got.mime.length < 100_000, 'the draft carries the message without the attachment');
  });

  test('curl: a Bcc-only recipient receives it, and the headers do not show them', async () => {
    const r = await send(
      curl,
      'implicit',
      (from, marker) => plainMessage(from, marker, 'For the hidden recipient.\n', 'undisclosed-recipients:;'),
      { to: 'hidden@example.org' },
    );
    const got = await arrived(r.marker);
    const rcpt = mimeRecipients(got.mime);
    assert.deepEqual(rcpt.to, []);
    assert.deepEqual(rcpt.bcc, ['hidden@example.org'], 'Graph is told to deliver to the envelope recipient');
    assert.match(got.mime.toString('latin1'), /^To: undisclosed-recipients:;\r$/m, 'To is as sent');
  });

  test('Python smtplib: two messages on one connection', async () => {
    const login = `g${++seq}-smtplib@example.com`;
    const acct = await s.addAccount(login);
    const markers = [`graph-${seq}-a`, `graph-${seq}-b`];
    const loginsBefore = await smtpLogins();
    const script = `
import os, smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
s = smtplib.SMTP_SSL('localhost', int(sys.argv[1]), context=ctx, timeout=60)
s.login(sys.argv[2], os.environ['SMTP_PASSWORD'])
for m in sys.argv[4:]:
    s.sendmail(sys.argv[2], ['bob@example.net'], 'From: %s\\r\\nTo: bob@example.net\\r\\nSubject: %s\\r\\n\\r\\nbody %s\\r\\n' % (sys.argv[2], m, m))
s.quit()
`;
    await new Promise<void>((resolve, reject) =>
      execFile(
        '/usr/bin/python3',
        ['-c', script, String(s.ports.submissions), login, s.proxyCaFile, ...markers],
        { env: { ...process.env, SMTP_PASSWORD: acct.password }, timeout: RUN_MS },
        (err, _out, stderr) => (err ? reject(new Error(`smtplib: ${err.message}\n${stderr}`)) : resolve()),
      ),
    );
    for (const m of markers) {
      const got = await arrived(m);
      assert.match(got.mime.toString('latin1'), new RegExp(`body ${m}\\r\\n$`));
    }
    assert.equal((await smtpLogins()) - loginsBefore, 1, 'both messages on one login');
  });
});
