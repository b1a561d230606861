import { connect as netConnect, type Socket } from 'node:net';
import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';

/**
 * The load generator's IMAP client: as little as a benchmark needs (greeting, one login,
 * tagged replies, counting bytes), so the generator is not the bottleneck.
 */

export type Auth =
  | { kind: 'login'; user: string; pass: string }
  | { kind: 'xoauth2'; user: string; token: string };

export interface Target {
  port: number;
  tls: boolean;
  /** Source address (any of 127/8 on Linux): a second client address for the per-address bounds. */
  localAddress?: string;
}

/** Client-side TLS session tickets per port, so repeated logins resume like a real client would. */
const sessions = new Map<number, Buffer>();

export function xoauth2(user: string, token: string): string {
  return Buffer.from(`user=${user}\x01auth=Bearer ${token}\x01\x01`).toString('base64');
}

export class BenchConn {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private closed = false;
  /** When set, incoming data is only counted (and scanned for the tag) instead of buffered. */
  private sink: { tag: Buffer; bytes: number; tail: Buffer; done: () => void } | undefined;

  private constructor(readonly socket: Socket | TLSSocket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  static open(t: Target, timeoutMs = 30_000): Promise<BenchConn> {
    return new Promise((resolve, reject) => {
      const opts: ConnectionOptions = {
        host: '127.0.0.1',
        port: t.port,
        rejectUnauthorized: false,
        servername: 'localhost',
        ...(t.localAddress ? { localAddress: t.localAddress } : {}),
      };
      const ticket = sessions.get(t.port);
      if (t.tls && ticket) opts.session = ticket;
      const s = t.tls
        ? tlsConnect(opts)
        : netConnect({
            host: '127.0.0.1',
            port: t.port,
            ...(t.localAddress ? { localAddress: t.localAddress } : {}),
          });
      if (t.tls) (s as TLSSocket).on('session', (b: Buffer) => sessions.set(t.port, b));
      s.setNoDelay(true);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('connect timeout'));
      }, timeoutMs);
      s.once(t.tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        s.off('error', reject);
        resolve(new BenchConn(s));
      });
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  private onData(d: Buffer): void {
    const sink = this.sink;
    if (sink) {
      sink.bytes += d.length;
      const hay = Buffer.concat([sink.tail, d.subarray(Math.max(0, d.length - 256))]);
      if (hay.includes(sink.tag)) {
        this.sink = undefined;
        sink.done();
        return;
      }
      sink.tail = hay.subarray(Math.max(0, hay.length - 64));
      return;
    }
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async line(): Promise<string> {
    for (;;) {
      const lf = this.buf.indexOf(0x0a);
      if (lf >= 0) {
        const l = this.buf.subarray(0, lf).toString('latin1').replace(/\r$/, '');
        this.buf = this.buf.subarray(lf + 1);
        return l;
      }
      if (this.closed) throw new Error('connection closed');
      await new Promise<void>((r) => {
        this.waiter = r;
      });
    }
  }

  /** Reads lines until the tagged reply; throws unless it is OK. */
  async tagged(tag: string): Promise<string> {
    for (;;) {
      const l = await this.line();
      if (l.startsWith(`${tag} `)) {
        if (!l.startsWith(`${tag} OK`)) throw new Error(`server said: ${l.slice(0, 200)}`);
        return l;
      }
    }
  }

  async greeting(): Promise<void> {
    const g = await this.line();
    if (!g.startsWith('* OK')) throw new Error(`bad greeting: ${g.slice(0, 200)}`);
  }

  async login(auth: Auth): Promise<void> {
    if (auth.kind === 'login') this.write(`L LOGIN ${auth.user} ${auth.pass}\r\n`);
    else this.write(`L AUTHENTICATE XOAUTH2 ${xoauth2(auth.user, auth.token)}\r\n`);
    await this.tagged('L');
  }

  async command(tag: string, text: string): Promise<void> {
    this.write(`${tag} ${text}\r\n`);
    await this.tagged(tag);
  }

  /** Sends a command and counts the reply's bytes up to its tagged line; returns the byte count. */
  countReply(tag: string, text: string): Promise<number> {
    return this.countUntil(`${tag} ${text}\r\n`, Buffer.from(`\r\n${tag} OK`));
  }

  /** Sends `command` and counts the reply's bytes until `end` arrives; returns the byte count. */
  countUntil(command: string, end: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      const sink = { tag: end, bytes: 0, tail: Buffer.alloc(0), done: () => resolve(sink.bytes) };
      this.sink = sink;
      this.socket.once('close', () => reject(new Error(`closed during ${command.trim()}`)));
      this.write(command);
    });
  }

  write(s: string | Buffer): void {
    this.socket.write(s);
  }

  destroy(): void {
    this.socket.destroy();
  }
}
