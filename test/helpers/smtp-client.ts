import { readFileSync } from 'node:fs';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { withDeadline } from './deadline.js';

/**
 * A scripted SMTP client for tests: write exact lines or bytes, read whole replies (RFC 5321
 * §4.2, multi-line `250-`…`250 `), upgrade with STARTTLS. Every read has a deadline.
 */

export interface SmtpReply {
  code: number;
  /** Each line's text after `NNN-` / `NNN `. */
  lines: string[];
  /** The lines joined with `\n`. */
  text: string;
}

export interface SmtpConnectOptions {
  host: string;
  port: number;
  tls: 'none' | 'implicit';
  /** Trust this CA (PEM text or a PEM file's path) and verify; without it nothing is verified. */
  ca?: string | Buffer;
  /** TLS server name (SNI and the identity checked); default the host when it is a name. */
  servername?: string;
  /** Deadline for connecting and the greeting, and the default for every later read. */
  timeoutMs?: number;
}

export interface SmtpClient {
  greeting: SmtpReply;
  /** Strings get CRLF appended; Buffers go out as they are. */
  send(line: string | Buffer): void;
  reply(ms?: number): Promise<SmtpReply>;
  command(line: string, ms?: number): Promise<SmtpReply>;
  ehlo(name: string): Promise<SmtpReply>;
  /** STARTTLS, expects 220, then TLS on the same socket (bytes sent before the handshake fail it). */
  startTls(): Promise<void>;
  /** The current socket (TLS after startTls()). */
  readonly raw: Socket | TLSSocket;
  /** Resolves when the server has closed the connection; rejects if still open after `ms`. */
  closed(ms?: number): Promise<void>;
  close(): void;
}

const DEFAULT_MS = 5_000;
const REPLY_LINE = /^(\d{3})([ -])(.*)$/s;

/**
 * One complete reply from the front of `buf`, or null while it is incomplete. Throws on a
 * line that is not `NNN-text`/`NNN text`/`NNN` or a continuation with a different code.
 */
export function parseReply(buf: Buffer): { reply: SmtpReply; rest: Buffer } | null {
  let at = 0;
  let code = 0;
  const lines: string[] = [];
  for (;;) {
    const lf = buf.indexOf(0x0a, at);
    if (lf === -1) return null;
    const line = buf.subarray(at, lf).toString('utf8').replace(/\r$/, '');
    at = lf + 1;
    const m = REPLY_LINE.exec(line.length === 3 ? `${line} ` : line);
    if (!m) throw new Error(`not an SMTP reply line: ${JSON.stringify(line)}`);
    const lineCode = Number(m[1]);
    if (lines.length > 0 && lineCode !== code) {
      throw new Error(`reply code changed from ${code} to ${lineCode} inside one reply`);
    }
    code = lineCode;
    lines.push(m[3]!);
    if (m[2] === ' ') return { reply: { code, lines, text: lines.join('\n') }, rest: buf.subarray(at) };
  }
}

function caText(ca: string | Buffer): string | Buffer {
  return typeof ca === 'string' && !ca.includes('-----BEGIN') ? readFileSync(ca) : ca;
}

function tlsOptions(o: SmtpConnectOptions): ConnectionOptions {
  const servername = o.servername ?? (isIP(o.host) ? undefined : o.host);
  return {
    host: o.host,
    ...(servername ? { servername } : {}),
    ...(o.ca ? { ca: caText(o.ca), rejectUnauthorized: true } : { rejectUnauthorized: false }),
  };
}

function open(o: SmtpConnectOptions, ms: number): Promise<Socket | TLSSocket> {
  return withDeadline(
    new Promise<Socket | TLSSocket>((resolve, reject) => {
      const s =
        o.tls === 'implicit'
          ? tlsConnect({ ...tlsOptions(o), port: o.port })
          : netConnect({ host: o.host, port: o.port });
      s.once(o.tls === 'implicit' ? 'secureConnect' : 'connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', reject);
    }),
    ms,
    `a connection to ${o.host}:${o.port}`,
  ).catch((e: Error) => {
    throw new Error(`SMTP connect to ${o.host}:${o.port} failed: ${e.message}`);
  });
}

export async function connectSmtp(o: SmtpConnectOptions): Promise<SmtpClient> {
  const defaultMs = o.timeoutMs ?? DEFAULT_MS;
  let socket = await open(o, defaultMs);
  let buf: Buffer = Buffer.alloc(0);
  let ended = false;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  let isClosed = false;
  let onClosed: (() => void) | null = null;
  const attach = (s: Socket | TLSSocket) => {
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      poke();
    });
    s.on('end', () => {
      ended = true;
      poke();
    });
    s.on('close', () => {
      ended = true;
      isClosed = true;
      onClosed?.();
      poke();
    });
    s.on('error', () => {});
  };
  attach(socket);

  const reply = async (ms = defaultMs): Promise<SmtpReply> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const got = parseReply(buf);
      if (got) {
        buf = got.rest;
        return got.reply;
      }
      if (ended)
        throw new Error(
          `connection closed before a complete reply (unread: ${JSON.stringify(buf.toString())})`,
        );
      const left = deadline - Date.now();
      await withDeadline(new Promise<void>((r) => (wake = r)), Math.max(0, left), 'an SMTP reply').catch(
        (e: Error) => {
          throw new Error(`${e.message} (unread: ${JSON.stringify(buf.toString().slice(0, 200))})`);
        },
      );
    }
  };
  const send = (line: string | Buffer) => {
    socket.write(typeof line === 'string' ? `${line}\r\n` : line);
  };
  const command = (line: string, ms?: number) => {
    send(line);
    return reply(ms);
  };

  const greeting = await reply();
  return {
    greeting,
    send,
    reply,
    command,
    ehlo: (name) => command(`EHLO ${name}`),
    startTls: async () => {
      const r = await command('STARTTLS');
      if (r.code !== 220) throw new Error(`STARTTLS refused: ${r.code} ${r.text}`);
      if (buf.length > 0)
        throw new Error(`bytes after the STARTTLS reply: ${JSON.stringify(buf.toString())}`);
      const plain = socket;
      plain.removeAllListeners('data');
      plain.removeAllListeners('end');
      plain.removeAllListeners('close');
      const tls = tlsConnect({ ...tlsOptions(o), socket: plain });
      await withDeadline(
        new Promise<void>((resolve, reject) => {
          tls.once('secureConnect', () => {
            tls.off('error', reject);
            resolve();
          });
          tls.once('error', reject);
        }),
        defaultMs,
        'the TLS handshake after STARTTLS',
      );
      socket = tls;
      attach(tls);
    },
    get raw() {
      return socket;
    },
    closed: (ms = defaultMs) =>
      isClosed
        ? Promise.resolve()
        : withDeadline(new Promise<void>((r) => (onClosed = r)), ms, 'the server to close the connection'),
    close: () => {
      socket.destroy();
    },
  };
}
