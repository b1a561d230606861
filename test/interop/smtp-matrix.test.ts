import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { mutt, SMTP_CLIENTS, swaks } from '../helpers/clients/smtp/index.js';
import type { Stack } from '../helpers/stack.js';
import {
  bigBody,
  checkDelivery,
  onWire,
  renderSmtpMatrix,
  runSmtpCell,
  type SmtpCell,
  type SmtpCellResult,
  smtpCellName,
  startSmtpInterop,
  wholeMessage,
  writeSmtpMatrix,
} from './smtp-harness.js';

// Every client × client TLS × (default, each forced way), plus a scanner sending a PDF-sized attachment.
const CELLS: SmtpCell[] = [
  ...SMTP_CLIENTS.flatMap((client) =>
    (['starttls', 'implicit'] as const).flatMap((transport) =>
      (['default', ...client.ways] as const).map((way) => ({ client, transport, way })),
    ),
  ),
  { client: swaks, transport: 'starttls', way: 'default', scanner: true },
  { client: swaks, transport: 'starttls', way: 'default', trailingDotProbe: true },
];
const WANT = { login: 'AUTH LOGIN', plain: 'AUTH PLAIN' } as const;

describe('interop: real SMTP clients through the proxy to Dovecot submission', { concurrency: 4 }, () => {
  let stack: Stack | undefined;
  const results: SmtpCellResult[] = [];
  const versions = new Map<string, string>();

  before(async () => {
    stack = await startSmtpInterop();
    for (const c of SMTP_CLIENTS) versions.set(c.name, await c.version());
  });

  after(async () => {
    try {
      if (results.length > 0) {
        const order = (r: SmtpCellResult) => CELLS.indexOf(r.cell);
        const md = renderSmtpMatrix(
          results.sort((a, b) => order(a) - order(b)),
          versions,
        );
        console.log(`SMTP interop matrix written to ${writeSmtpMatrix(md)}`);
      }
    } finally {
      await stack?.close();
    }
  });

  for (const cell of CELLS) {
    test(smtpCellName(cell), { timeout: 90_000 }, async () => {
      const r = await runSmtpCell(stack!, cell);
      results.push(r);
      assert.ok(r.pass, r.failure);
      const want = cell.way === 'default' ? cell.client.defaultMechanism : WANT[cell.way];
      assert.equal(r.observedLogin, want, `${smtpCellName(cell)}: the proxy saw a different AUTH mechanism`);
    });
  }
});

// The check each cell relies on, fed recordings a faulty proxy could produce (hand-made: no real
// server here garbles mail on purpose), so a matrix that passes means the bytes were compared.
describe('SMTP interop: the delivery check fails on what a faulty relay would record', () => {
  const RECEIVED = 'Received: from vm ([127.0.0.1])\r\n\tby localhost with ESMTPSA\r\n\tid x\r\n';
  const from = 'a@example.com';
  const to = 'b@example.net';
  const subject = 'check';
  const content = wholeMessage(from, to, subject, bigBody(false));
  const exact = Buffer.concat([Buffer.from(RECEIVED), onWire(content)]);
  const whole = {
    cell: { client: swaks, transport: 'starttls', way: 'default' },
    from,
    to,
    subject,
    content,
  } as const;
  const check = (data: Buffer, e: Parameters<typeof checkDelivery>[0] = whole, env = { from, to }) =>
    checkDelivery(e, { mailFrom: env.from, rcptTos: [env.to], data }).problems;
  const replaceOnce = (b: Buffer, a: string, z: string) =>
    Buffer.from(b.toString('latin1').replace(a, z), 'latin1');

  test('the exact recording passes', () => assert.deepEqual(check(exact), []));
  test('a "." line left dot-stuffed', () =>
    assert.notDeepEqual(check(replaceOnce(exact, '\r\n.\r\n', '\r\n..\r\n')), []));
  test('a "." line lost', () => assert.notDeepEqual(check(replaceOnce(exact, '\r\n.\r\n', '\r\n')), []));
  test('a bare LF', () => assert.notDeepEqual(check(replaceOnce(exact, 'line 000007', 'line\n000007')), []));
  test('the final CRLF missing', () => assert.notDeepEqual(check(exact.subarray(0, -2)), []));
  test('no Received header', () => assert.notDeepEqual(check(onWire(content)), []));
  test('two Received headers', () =>
    assert.notDeepEqual(check(Buffer.concat([Buffer.from(RECEIVED), exact])), []));
  test('another envelope', () => assert.notDeepEqual(check(exact, whole, { from, to: 'c@example.net' }), []));
  test('a body client: its own headers pass, a re-encoded body does not', () => {
    const body = bigBody(true);
    const e = {
      ...whole,
      cell: { client: mutt, transport: 'starttls', way: 'default' },
      content: body,
    } as const;
    const head = `Date: x\r\nFrom: ${from}\r\nSubject: ${subject}\r\n`;
    const recorded = (h: string) => Buffer.concat([Buffer.from(`${RECEIVED}${h}\r\n`), onWire(body)]);
    assert.deepEqual(check(recorded(head), e), []);
    assert.notDeepEqual(check(recorded(`${head}Content-Transfer-Encoding: quoted-printable\r\n`), e), []);
    assert.notDeepEqual(check(recorded(head.replace(subject, 'other')), e), []);
  });
  test('the scanner: the decoded attachment must equal the file', () => {
    const file = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256));
    const e = { ...whole, cell: { ...whole.cell, scanner: true }, attachment: file };
    const mime = (b: Buffer) =>
      Buffer.from(
        `${RECEIVED}Subject: ${subject}\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n${b.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n--B--\r\n`,
      );
    assert.deepEqual(check(mime(file), e), []);
    const changed = Buffer.from(file);
    changed.writeUInt8(changed[1234]! ^ 1, 1234);
    assert.notDeepEqual(check(mime(changed), e), []);
  });
});
