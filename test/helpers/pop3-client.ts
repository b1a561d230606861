import { readFileSync } from 'node:fs';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import { withDeadline } from './deadline.js';

/**
 * A scripted POP3 client for tests: write exact lines, read status lines and multi-line
 * responses with their wire bytes kept (to see byte-stuffing), upgrade with STLS. Every read
 * has a deadline.
 */

export interface Pop3ConnectOptions {
  host: string;
  port: number;
  tls: 'none' | 'implicit';
  /** Trust this CA (PEM text or a PEM file's path) and verify; without it nothing is verified. */
  ca?: string | Buffer;
  /** Deadline for connecting and the greeting, and the default for every later read. */
  timeoutMs?: number;
}

export interface Pop3Multi {
  /** The status line without its CRLF. */
  status: string;
  /** The body exactly as on the wire, stuffed, terminating ".\r\n" excluded (empty after -ERR). */
  wire: Buffer;
}

export interface Pop3Client {
  /** The greeting line without its CRLF. */
  greeting: string;
  /** Strings get CRLF appended; Buffers go out as they are. */
  send(line: string | Buffer): void;
  /** One status line without its CRLF. */
  line(ms?: number): Promise<string>;
  command(line: string, ms?: number): Promise<string>;
  /** A command whose `+OK` answer is multi-line (CAPA, LIST, UIDL, RETR …). */
  multiline(line: string, ms?: number): Promise<Pop3Multi>;
  /** CAPA's lines after `+OK`, unstuffed. */
  capa(): Promise<string[]>;
  /** STLS, expects +OK, then TLS on the same socket (bytes before the handshake fail it). */
  stls(): Promise<void>;
  /** Resolves when the server has closed the connection; rejects if still open after `ms`. */
  closed(ms?: number): Promise<void>;
  close(): void;
}

const DEFAULT_MS = 5_000;
const CRLF = Buffer.from('\r\n');
const TERMINATOR = Buffer.from('\r\n.\r\n');

/** RFC 1939 §3: a multi-line body back to the octets the server meant, line ends as sent. */
export function unstuff(wire: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  while (at < wire.length) {
    const lf = wire.indexOf(CRLF, at);
    const end = lf === -1 ? wire.length : lf + 2;
    out.push(wire.subarray(wire[at] === 0x2e ? at + 1 : at, end));
    at = end;
  }
  return Buffer.concat(out);
}

/** The lines of a multi-line body, unstuffed, without line ends. */
export function bodyLines(m: Pop3Multi): string[] {
  const text = unstuff(m.wire).toString('utf8');
  return text === '' ? [] : text.replace(/\r\n$/, '').split('\r\n');
}

function caText(ca: string | Buffer): string | Buffer {
  return typeof ca === 'string' && !ca.includes('-----BEGIN') ? readFileSync(ca) : ca;
}

function tlsOptions(o: Pop3ConnectOptions): ConnectionOptions {
  return {
    host: o.host,
    ...(isIP(o.host) ? {} : { servername: o.host }),
    ...(o.ca ? { ca: caText(o.ca), rejectUnauthorized: true } : { rejectUnauthorized: false }),
  };
}

function open(o: Pop3ConnectOptions, ms: number): Promise<Socket | TLSSocket> {
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
    throw new Error(`POP3 connect to ${o.host}:${o.port} failed: ${e.message}`);
  });
}

export async function connectPop3(o: Pop3ConnectOptions): Promise<Pop3Client> {
  const defaultMs = o.timeoutMs ?? DEFAULT_MS;
  let socket = await open(o, defaultMs);
  const chunks: Buffer[] = [];
  let buf: Buffer = Buffer.alloc(0);
  let ended = false;
  let isClosed = false;
  let onClosed: (() => void) | null = null;
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const attach = (s: Socket | TLSSocket) => {
    s.on('data', (d: Buffer) => {
      chunks.push(d);
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

  /** Waits until `take(buf)` finds a whole item; chunks are joined only when new ones came (1 MiB bodies). */
  const read = async <T>(take: (b: Buffer) => T | null, ms: number, what: string): Promise<T> => {
    const deadline = Date.now() + ms;
    for (;;) {
      if (chunks.length > 0) buf = Buffer.concat([buf, ...chunks.splice(0)]);
      const got = take(buf);
      if (got !== null) return got;
      if (ended) throw new Error(`connection closed before ${what} (unread: ${preview(buf)})`);
      await withDeadline(
        new Promise<void>((r) => (wake = r)),
        Math.max(0, deadline - Date.now()),
        what,
      ).catch((e: Error) => {
        throw new Error(`${e.message} (unread: ${preview(buf)})`);
      });
    }
  };
  const takeLine = (b: Buffer): string | null => {
    const at = b.indexOf(CRLF);
    if (at === -1) return null;
    buf = b.subarray(at + 2);
    return b.subarray(0, at).toString('utf8');
  };
  const line = (ms = defaultMs) => read(takeLine, ms, 'a POP3 status line');
  const send = (l: string | Buffer) => {
    socket.write(typeof l === 'string' ? `${l}\r\n` : l);
  };
  const command = (l: string, ms?: number) => {
    send(l);
    return line(ms);
  };
  const multiline = async (l: string, ms = defaultMs): Promise<Pop3Multi> => {
    send(l);
    const status = await line(ms);
    if (!status.startsWith('+OK')) return { status, wire: Buffer.alloc(0) };
    let from = 0;
    const wire = await read(
      (b) => {
        if (b.subarray(0, 3).equals(Buffer.from('.\r\n'))) {
          buf = b.subarray(3);
          return Buffer.alloc(0);
        }
        const at = b.indexOf(TERMINATOR, from);
        if (at === -1) {
          // The terminator may straddle the next chunk.
          from = Math.max(0, b.length - TERMINATOR.length);
          return null;
        }
        buf = b.subarray(at + TERMINATOR.length);
        return b.subarray(0, at + 2);
      },
      ms,
      `the body after ${JSON.stringify(l.split(' ')[0])}`,
    );
    return { status, wire };
  };

  const greeting = await line();
  return {
    greeting,
    send,
    line,
    command,
    multiline,
    capa: async () => {
      const r = await multiline('CAPA');
      if (!r.status.startsWith('+OK')) throw new Error(`CAPA refused: ${r.status}`);
      return bodyLines(r);
    },
    stls: async () => {
      const r = await command('STLS');
      if (!r.startsWith('+OK')) throw new Error(`STLS refused: ${r}`);
      if (buf.length > 0 || chunks.length > 0) throw new Error('bytes after the STLS reply');
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
        'the TLS handshake after STLS',
      );
      socket = tls;
      attach(tls);
    },
    closed: (ms = defaultMs) =>
      isClosed
        ? Promise.resolve()
        : withDeadline(new Promise<void>((r) => (onClosed = r)), ms, 'the server to close the connection'),
    close: () => socket.destroy(),
  };
}

function preview(b: Buffer): string {
  return JSON.stringify(b.subarray(0, 200).toString('latin1'));
}
