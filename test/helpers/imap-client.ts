import { connect as netConnect, type Socket } from 'node:net';
import { type TLSSocket, connect as tlsConnect } from 'node:tls';
import { withDeadline } from './deadline.js';

/** How long one read waits for the server; a test needing longer passes its own. */
const WAIT_MS = 30_000;

/**
 * A tiny raw-socket IMAP client for tests: write exact bytes, read exact lines, watch the
 * socket close. Nothing is parsed beyond CRLF, so tests see what a client would see.
 */
export class RawImapClient {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(public socket: Socket | TLSSocket) {
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    this.attach(socket);
  }

  private attach(s: Socket | TLSSocket): void {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    s.on('end', () => {
      this.ended = true;
      this.wake();
    });
    s.on('close', () => {
      this.ended = true;
      this.wake();
    });
    s.on('error', () => {});
  }

  /** Until the next bytes or end arrive; rejects once `deadline` has passed. */
  private wait(deadline: number, what: string): Promise<void> {
    const left = Math.max(0, deadline - Date.now());
    return withDeadline(new Promise<void>((r) => this.waiters.push(r)), left, what);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static connect(port: number, opts: { tls?: boolean; host?: string } = {}): Promise<RawImapClient> {
    const host = opts.host ?? '127.0.0.1';
    return new Promise((resolve, reject) => {
      const s = opts.tls
        ? tlsConnect({ port, host, rejectUnauthorized: false, servername: 'localhost' })
        : netConnect({ port, host });
      s.once(opts.tls ? 'secureConnect' : 'connect', () => {
        s.off('error', reject);
        resolve(new RawImapClient(s));
      });
      s.once('error', reject);
    });
  }

  /** Wraps an already-connected socket (e.g. after writing a PROXY header by hand). */
  static wrap(socket: Socket | TLSSocket): RawImapClient {
    return new RawImapClient(socket);
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Next line without CRLF; rejects if the connection closes first or nothing comes within `ms`. */
  async readLine(ms = WAIT_MS): Promise<string> {
    const deadline = Date.now() + ms;
    for (;;) {
      const lf = this.buf.indexOf(0x0a);
      if (lf !== -1) {
        const line = this.buf.subarray(0, lf).toString('utf8').replace(/\r$/, '');
        this.buf = this.buf.subarray(lf + 1);
        return line;
      }
      if (this.ended) throw new Error(`connection closed (unread: ${JSON.stringify(this.buf.toString())})`);
      await this.wait(deadline, 'a line from the server');
    }
  }

  /** Reads lines until one starts with `prefix` (e.g. a tag); returns all lines read. */
  async readUntil(prefix: string): Promise<string[]> {
    const lines: string[] = [];
    for (;;) {
      const line = await this.readLine();
      lines.push(line);
      if (line.startsWith(prefix)) return lines;
    }
  }

  /** Sends a command and returns the response lines up to its tagged reply. */
  async command(tag: string, text: string): Promise<string[]> {
    this.write(`${tag} ${text}\r\n`);
    return this.readUntil(`${tag} `);
  }

  /** All bytes until the server closes the connection; rejects if it stays open `ms`. */
  async readToClose(ms = WAIT_MS): Promise<string> {
    const deadline = Date.now() + ms;
    while (!this.ended) await this.wait(deadline, 'the server to close the connection');
    const rest = this.buf.toString('utf8');
    this.buf = Buffer.alloc(0);
    return rest;
  }

  /** Until the socket has closed; rejects if it is still open after `ms`. */
  waitClosed(ms = WAIT_MS): Promise<void> {
    return withDeadline(this.closed, ms, 'the connection to close');
  }

  /** Upgrades after a `OK` to STARTTLS has been read. */
  async startTls(): Promise<void> {
    const plain = this.socket as Socket;
    plain.removeAllListeners('data');
    plain.removeAllListeners('end');
    plain.removeAllListeners('close');
    const tls = tlsConnect({ socket: plain, rejectUnauthorized: false, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      tls.once('secureConnect', () => resolve());
      tls.once('error', reject);
    });
    this.socket = tls;
    this.attach(tls);
  }

  close(): void {
    this.socket.destroy();
  }
}

const PROXY_V2_SIGNATURE = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** A PROXY protocol v2 header (PROXY command, TCP over IPv4/IPv6; LOCAL when source is null). */
export function proxyV2Header(source: { ip: number[]; port: number } | null, family = 0x11): Buffer {
  if (!source) return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  const body = Buffer.alloc(source.ip.length === 4 ? 12 : 36);
  Buffer.from(source.ip).copy(body, 0);
  const portAt = source.ip.length === 4 ? 8 : 32;
  body.writeUInt16BE(source.port, portAt);
  body.writeUInt16BE(993, portAt + 2);
  const head = Buffer.from([0x21, family, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, body]);
}
