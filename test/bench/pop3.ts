import { withDeadline } from '../helpers/deadline.js';
import { BenchConn, type Target, xoauth2 } from './imap.js';

/**
 * The load generator's POP3 client: greeting, USER/PASS or AUTH XOAUTH2 with an initial response,
 * RETR counted rather than buffered, QUIT. Every read is bounded by a deadline.
 */

/** A password (USER/PASS), or a bearer token straight to the upstream (AUTH XOAUTH2). */
export type Pop3Auth = { user: string; pass: string } | { user: string; token: string };

const REPLY_MS = 120_000;
const END_OF_MULTILINE = Buffer.from('\r\n.\r\n');

export class Pop3Conn {
  private constructor(private readonly c: BenchConn) {}

  static async open(t: Target): Promise<Pop3Conn> {
    const p = new Pop3Conn(await BenchConn.open(t));
    try {
      await p.ok();
      return p;
    } catch (err) {
      p.destroy();
      throw err;
    }
  }

  /** Reads one status line; throws unless it is `+OK`. */
  async ok(): Promise<string> {
    const l = await withDeadline(this.c.line(), REPLY_MS, 'a POP3 reply');
    if (!l.startsWith('+OK')) throw new Error(`expected +OK, server said: ${l.slice(0, 200)}`);
    return l;
  }

  command(text: string): Promise<string> {
    this.c.write(`${text}\r\n`);
    return this.ok();
  }

  /** The whole login exchange, as a client does it: USER then PASS, or one AUTH line. */
  async login(a: Pop3Auth): Promise<void> {
    if ('token' in a) {
      await this.command(`AUTH XOAUTH2 ${xoauth2(a.user, a.token)}`);
      return;
    }
    await this.command(`USER ${a.user}`);
    await this.command(`PASS ${a.pass}`);
  }

  /** RETR of message `n`: the bytes of the reply up to and including its final dot line. */
  retr(n: number): Promise<number> {
    return withDeadline(this.c.countUntil(`RETR ${n}\r\n`, END_OF_MULTILINE), REPLY_MS, `RETR ${n}`);
  }

  async quit(): Promise<void> {
    await this.command('QUIT').catch(() => undefined);
    this.destroy();
  }

  destroy(): void {
    this.c.destroy();
  }
}
