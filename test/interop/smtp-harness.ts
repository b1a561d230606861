import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { redact } from '../helpers/clients/redact.js';
import type { SmtpClientDriver, SmtpTransport, SmtpWay } from '../helpers/clients/smtp/index.js';
import { until } from '../helpers/deadline.js';
import type { SinkMessage } from '../helpers/smtp-sink.js';
import { type Stack, startStack, type TestAccount } from '../helpers/stack.js';
import { type LogLine, linesFor, loggedMechanisms } from './harness.js';

/**
 * One proxy stack (oidc-provider ← Dovecot submission → recording sink) driven by real SMTP
 * clients. A cell is one client run: its own account, envelope and message of over 1 MiB;
 * the sink must then hold Dovecot's Received header followed by exactly the bytes the client
 * put on the wire after DATA (dot-unstuffed).
 */

export interface SmtpCell {
  client: SmtpClientDriver;
  transport: SmtpTransport;
  way: SmtpWay;
  /** The scanner cell: a binary attachment instead of the text message. */
  scanner?: boolean;
  /** Sends a message whose last line is "." to a client known to drop it, and checks that it still does. */
  trailingDotProbe?: boolean;
}

export interface SmtpCellResult {
  cell: SmtpCell;
  pass: boolean;
  /** How the client authenticated, as the proxy logged it ("login ok" for this account). */
  observedLogin: string;
  /** Whether the client's own trace shows an initial response on its AUTH line. */
  initialResponse: string;
  /** What was compared, for the matrix. */
  compared: string;
  seconds: number;
  failure?: string;
}

export const smtpCellName = (c: SmtpCell) =>
  `${c.client.name} · ${c.transport} · way ${c.way}${c.scanner ? ' · scanner attachment' : ''}${c.trailingDotProbe ? ' · last line "." (known limitation)' : ''}`;

export async function startSmtpInterop(): Promise<Stack> {
  const stack = await startStack({ logLevel: 'debug' });
  if (!stack.sink) {
    await stack.close();
    throw new Error('the stack has no SMTP sink: Dovecot submission would relay nowhere');
  }
  return stack;
}

const MIN_SIZE = 1024 * 1024;
const LINE = 'the quick brown fox jumps over the lazy dog 0123456789 abcdefghij';

/**
 * A text body of over 1 MiB (LF line ends) with the lines SMTP transparency is about: lines
 * that are exactly ".", lines starting with "." or "..", one first and one last. ASCII only,
 * short lines, no "From " line and no "%" (swaks tokens): clients have no reason to re-encode it.
 */
export function bigBody(finalNewline: boolean, lastLineDot = true): string {
  const lines = ['.', '.starts with a dot'];
  let size = 0;
  const add = (l: string) => {
    lines.push(l);
    size += l.length + 1;
  };
  for (let i = 1; size < MIN_SIZE; i++) {
    add(`line ${String(i).padStart(6, '0')} ${LINE}`);
    if (i % 50 === 0) add('.');
    if (i % 70 === 0) add('.leading dot line');
    if (i % 90 === 0) add('..two dots');
    if (i % 110 === 0) add('...');
  }
  lines.push(lastLineDot ? '.' : 'last line');
  return lines.join('\n') + (finalNewline ? '\n' : '');
}

export function wholeMessage(from: string, to: string, subject: string, body: string): string {
  const id = subject.replace(/\W+/g, '.');
  return `From: ${from}\nTo: ${to}\nSubject: ${subject}\nDate: Sat, 21 Nov 2026 10:00:00 +0000\nMessage-ID: <${id}@example.com>\n\n${body}`;
}

/** What a client puts on the wire after DATA for `text`, dot-unstuffed: CRLF line ends, ending in one. */
export function onWire(text: string): Buffer {
  const crlf = text.replaceAll('\n', '\r\n');
  return Buffer.from(crlf.endsWith('\r\n') ? crlf : `${crlf}\r\n`, 'latin1');
}

/** Length of the leading `Received:` header (with its folded lines), or -1 when data does not start with one. */
export function receivedHeaderLength(data: Buffer): number {
  return leadingFieldLength(data, 'Received');
}

/** Length of the header field `name` (with its folded lines) that data starts with, or -1 when it does not. */
export function leadingFieldLength(data: Buffer, name: string, eol = '\r\n'): number {
  if (!data.subarray(0, name.length + 1).equals(Buffer.from(`${name}:`))) return -1;
  let at = 0;
  for (;;) {
    const end = data.indexOf(eol, at);
    if (end === -1) return -1;
    at = end + eol.length;
    if (data[at] !== 0x20 && data[at] !== 0x09) return at;
  }
}

/** Header block (without the blank line) and body of a CRLF message. */
export function splitMessage(data: Buffer): { head: string; body: Buffer } | undefined {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  return { head: data.subarray(0, end).toString('latin1'), body: data.subarray(end + 4) };
}

/** The decoded content of the MIME part whose Content-Type is `type` (base64 only). */
export function mimePart(data: Buffer, type: string): Buffer | undefined {
  const text = data.toString('latin1');
  const boundary = /boundary="?([^";\r\n]+)"?/i.exec(text)?.[1];
  if (!boundary) return undefined;
  for (const part of text.split(`--${boundary}`)) {
    const m = splitMessage(Buffer.from(part.replace(/^\r\n/, ''), 'latin1'));
    if (!m || !new RegExp(`^Content-Type: *${type}`, 'im').test(m.head)) continue;
    if (!/^Content-Transfer-Encoding: *base64/im.test(m.head)) return undefined;
    return Buffer.from(m.body.toString('latin1').replace(/\s+/g, ''), 'base64');
  }
  return undefined;
}

// The AUTH line a client sent (not the server's `250-AUTH PLAIN LOGIN`), as its trace prints it.
const AUTH_SENT = /(?<!\d{3}[- ])\bAUTH (PLAIN|LOGIN)(?: (\S+?))?(?:\\r\\n'|\r?$)/m;

export function initialResponseIn(transcript: string): string {
  const m = AUTH_SENT.exec(transcript);
  if (!m) return 'not in trace';
  return m[2] ? 'with initial response' : 'without';
}

/** A readable slice of a long trace: the dialogue before DATA and the end, never the megabyte in between. */
export function compact(text: string): string {
  const lines = text.split('\n').map((l) => (l.length > 300 ? `${l.slice(0, 300)}… (${l.length} chars)` : l));
  if (lines.length <= 260) return lines.join('\n');
  return [...lines.slice(0, 200), `… ${lines.length - 240} lines left out …`, ...lines.slice(-40)].join('\n');
}

/** What one client run left behind, redacted: its own trace, the proxy's lines for its account, how it logged in. */
export interface SeenRun {
  login: string;
  secrets: string[];
  transcript: string;
  proxyLines: LogLine[];
  observedLogin: string;
}

export function observeRun(stack: Stack, acct: TestAccount, rawTranscript: string): SeenRun {
  const { login } = acct;
  const secrets = [acct.password, acct.refreshToken ?? '', acct.accessToken ?? ''];
  const proxyLines = linesFor(stack.logs(), login);
  return {
    login,
    secrets,
    transcript: redact(rawTranscript, login, secrets),
    proxyLines,
    observedLogin: loggedMechanisms(proxyLines),
  };
}

/** A failed cell's report (what went wrong, the client's trace, the proxy's log), redacted; undefined when nothing did. */
export function cellFailure(name: string, problems: string[], seen: SeenRun): string | undefined {
  if (problems.length === 0) return undefined;
  return redact(
    `${name} failed: ${problems.join('; ')}\n--- client transcript ---\n${compact(seen.transcript)}\n--- proxy log ---\n${seen.proxyLines.map((l) => l.raw).join('\n')}`,
    seen.login,
    seen.secrets,
  );
}

let seq = 0;

export async function runSmtpCell(stack: Stack, cell: SmtpCell, timeoutMs = 45_000): Promise<SmtpCellResult> {
  const t0 = Date.now();
  const { client, transport } = cell;
  const login = `s${++seq}-${client.name.replace(/\W+/g, '')}-${transport}-${cell.way}`.toLowerCase();
  const acct = await stack.addAccount(login);
  const from = `${login}@example.com`;
  const to = `rcpt-${login}@example.net`;
  const subject = `smtp interop ${login}`;
  // Where the client allows both, STARTTLS cells end without a final newline (the client must add CRLF).
  const finalNewline =
    client.finalNewline === 'either' ? transport === 'implicit' : client.finalNewline === 'required';
  // A client that drops a last "." line gets a message without one, except in its probe cell.
  const lastDot = !client.dropsLastDotLine || cell.trailingDotProbe === true;
  const body = bigBody(finalNewline, lastDot);
  const content = client.input === 'message' ? wholeMessage(from, to, subject, body) : body;
  const workDir = mkdtempSync(join(tmpdir(), 'iop-smtp-client-'));
  try {
    const contentFile = join(workDir, client.input === 'message' ? 'message.eml' : 'body.txt');
    writeFileSync(contentFile, content);
    let attachment: Buffer | undefined;
    let attach: { file: string; type: string } | undefined;
    if (cell.scanner) {
      // A scanned-document-sized binary with a PDF signature: every byte value, no line structure.
      attachment = Buffer.concat([
        Buffer.from('%PDF-1.4\n%\xe2\xe3\xcf\xd3\n', 'latin1'),
        randomBytes(2_000_000),
      ]);
      attach = { file: join(workDir, 'scan.pdf'), type: 'application/pdf' };
      writeFileSync(attach.file, attachment);
    }
    const run = await client.send({
      host: 'localhost',
      port: transport === 'implicit' ? stack.ports.submissions : stack.ports.submission,
      transport,
      caFile: stack.proxyCaFile,
      user: login,
      password: acct.password,
      way: cell.way,
      from,
      to,
      subject,
      contentFile,
      ehloName: 'client.example.com',
      ...(attach ? { attach } : {}),
      workDir,
      timeoutMs,
    });
    const seen = observeRun(stack, acct, run.transcript);
    const { transcript, observedLogin } = seen;
    const problems: string[] = [];
    if (run.error) problems.push(run.error);
    if (observedLogin === '—') problems.push('the proxy logged no successful login for this account');
    let got: SinkMessage | undefined;
    if (!run.error) {
      const find = () => stack.sink!.messages().find((m) => m.rcptTos.includes(to));
      await until(() => find() !== undefined, 10_000, `the sink to record the message to ${to}`, 50).catch(
        (e: Error) => problems.push(e.message),
      );
      got = find();
    }
    const checked = got
      ? checkDelivery({ cell, from, to, subject, content, ...(attachment ? { attachment } : {}) }, got)
      : undefined;
    problems.push(...(checked?.problems ?? []));
    const failure = cellFailure(smtpCellName(cell), problems, seen);
    return {
      cell,
      pass: problems.length === 0,
      observedLogin,
      initialResponse: initialResponseIn(transcript),
      compared: checked?.compared ?? '—',
      seconds: (Date.now() - t0) / 1000,
      failure,
    };
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

export interface Expected {
  cell: SmtpCell;
  from: string;
  to: string;
  subject: string;
  /** The file the client was given (LF line ends). */
  content: string;
  /** The scanner's attachment. */
  attachment?: Buffer;
}

/**
 * What is wrong with a message the sink recorded: the envelope, Dovecot's one Received header,
 * then the client's bytes — the whole message, or the body after the client's own headers.
 */
export function checkDelivery(e: Expected, got: SinkMessage): { compared: string; problems: string[] } {
  const problems: string[] = [];
  if (got.mailFrom !== e.from || got.rcptTos.length !== 1 || got.rcptTos[0] !== e.to)
    problems.push(`envelope: MAIL FROM <${got.mailFrom}> RCPT TO ${JSON.stringify(got.rcptTos)}`);
  const rl = receivedHeaderLength(got.data);
  const received = rl > 0 ? got.data.subarray(0, rl).toString('latin1') : '';
  if (rl < 0 || !/\bby localhost\b/.test(received))
    problems.push('the sink data does not start with Dovecot’s Received header');
  const rest = got.data.subarray(Math.max(rl, 0));
  if (/^Received:/im.test(splitMessage(rest)?.head ?? '')) problems.push('more than one Received header');
  if (e.cell.scanner) {
    const decoded = mimePart(rest, 'application/pdf');
    if (!e.attachment || !decoded?.equals(e.attachment))
      problems.push(
        `attachment differs (got ${decoded?.length ?? 'none'} bytes, want ${e.attachment?.length})`,
      );
    return { compared: 'attachment decoded from the MIME part', problems };
  }
  if (e.cell.trailingDotProbe) {
    const want = onWire(e.content.replace(/\n\.\n?$/, ''));
    if (!rest.equals(want)) problems.push(`no longer drops the last "." line: ${differs(rest, want)}`);
    return { compared: 'whole message minus its last "." line', problems };
  }
  const want = onWire(e.content);
  if (e.cell.client.input === 'message') {
    if (!rest.equals(want)) problems.push(differs(rest, want));
    return { compared: 'whole message', problems };
  }
  const m = splitMessage(rest);
  if (!m) problems.push('no header/body separator in the sink data');
  else {
    if (!m.head.split('\r\n').includes(`Subject: ${e.subject}`))
      problems.push('the Subject header is not ours');
    const cte = /^Content-Transfer-Encoding: *(\S+)/im.exec(m.head)?.[1];
    if (cte && cte.toLowerCase() !== '7bit') problems.push(`the client re-encoded the body as ${cte}`);
    if (!m.body.equals(want)) problems.push(differs(m.body, want));
  }
  return { compared: 'body after its own headers', problems };
}

export function differs(got: Buffer, want: Buffer): string {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  const around = (b: Buffer) => JSON.stringify(b.subarray(Math.max(0, i - 30), i + 30).toString('latin1'));
  return `bytes differ at offset ${i} (got ${got.length}, want ${want.length}): got ${around(got)} want ${around(want)}`;
}

const WAYS: Record<SmtpWay, string> = {
  default: 'default',
  login: 'AUTH LOGIN forced',
  plain: 'AUTH PLAIN forced',
};

export function renderSmtpMatrix(results: SmtpCellResult[], versions: Map<string, string>): string {
  const rows = results.map(
    (r) =>
      `| ${r.cell.client.name}${r.cell.scanner ? ' (scanner)' : ''} | ${versions.get(r.cell.client.name) ?? '?'} | ${r.cell.transport} | ${WAYS[r.cell.way]} | ${r.observedLogin} | ${r.initialResponse} | ${r.compared} | ${r.pass ? 'pass' : '**FAIL**'} |`,
  );
  const notes = [...new Set(results.map((r) => r.cell.client))]
    .filter((c) => c.notes)
    .map((c) => `- ${c.name} (${versions.get(c.name)}): ${c.notes}.`);
  return `# SMTP interoperability matrix

Each cell: the client authenticates at the proxy with an app password and sends a message of
over 1 MiB (lines ".", ".x", "..") to Dovecot submission, which relays it to a recording sink.
"Authenticated with" is what the proxy logged; "initial response" is read from the client's trace.
${results.filter((r) => r.pass).length} of ${results.length} cells pass.

| client | version | client TLS | way | authenticated with (observed) | initial response | compared | result |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join('\n')}

${notes.join('\n')}
`;
}

/** Where the Markdown matrix goes: $SMTP_INTEROP_MATRIX, else a file in the temp dir. */
export function writeSmtpMatrix(markdown: string): string {
  const path = process.env.SMTP_INTEROP_MATRIX || join(tmpdir(), 'imap-oauth-proxy-smtp-interop-matrix.md');
  writeFileSync(path, markdown);
  return path;
}
