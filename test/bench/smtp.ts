import { BenchConn, type Target, xoauth2 } from './imap.js';

/**
 * The load generator's SMTP submission client: greeting, EHLO, AUTH PLAIN or XOAUTH2 with an
 * initial response, one transaction at a time, QUIT. Just enough to time a submission; every read is
 * bounded by the connection's deadline.
 */

/** A password (AUTH PLAIN), or a bearer token straight to the upstream (AUTH XOAUTH2). */
export type SmtpAuth = { user: string; pass: string } | { user: string; token: string };

const REPLY_MS = 120_000;
const CRLF_DOT_CRLF = Buffer.from('.\r\n');

export function authLine(a: SmtpAuth): string {
  return 'token' in a
    ? `AUTH XOAUTH2 ${xoauth2(a.user, a.token)}`
    : `AUTH PLAIN ${Buffer.from(`\0${a.user}\0${a.pass}`).toString('base64')}`;
}

/** A message of about `size` bytes whose lines never start with a dot (nothing to stuff). */
export function benchMessage(size: number, n: number): Buffer {
  const head = `From: bench@example.com\r\nTo: rcpt@example.com\r\nSubject: bench ${n}\r\nMessage-ID: <s${n}@example.com>\r\n\r\n`;
  const line = `${'y'.repeat(76)}\r\n`;
  return Buffer.from(head + line.repeat(Math.max(1, Math.floor((size - head.length) / line.length))));
}

export class SmtpConn {
  private constructor(private readonly c: BenchConn) {}

  static async open(t: Target): Promise<SmtpConn> {
    const s = new SmtpConn(await BenchConn.open(t));
    try {
      await s.expect(220);
      return s;
    } catch (err) {
      s.destroy();
      throw err;
    }
  }

  /** Reads one (possibly multi-line) reply; throws unless its code is `code`. */
  async expect(code: number): Promise<string> {
    let t: NodeJS.Timeout | undefined;
    const timer = new Promise<never>((_r, reject) => {
      t = setTimeout(() => reject(new Error(`no SMTP reply within ${REPLY_MS} ms`)), REPLY_MS);
    });
    try {
      for (;;) {
        const l = await Promise.race([this.c.line(), timer]);
        if (l.length >= 4 && l[3] === '-') continue;
        if (l.slice(0, 3) !== String(code))
          throw new Error(`expected ${code}, server said: ${l.slice(0, 200)}`);
        return l;
      }
    } finally {
      clearTimeout(t);
    }
  }

  async command(text: string, code: number): Promise<string> {
    this.c.write(`${text}\r\n`);
    return this.expect(code);
  }

  ehlo(): Promise<string> {
    return this.command('EHLO bench.example.com', 250);
  }

  auth(a: SmtpAuth): Promise<string> {
    return this.command(authLine(a), 235);
  }

  /** One transaction; resolves with the milliseconds from sending DATA to the 250 after the final dot. */
  async send(message: Buffer): Promise<number> {
    await this.command('MAIL FROM:<bench@example.com>', 250);
    await this.command('RCPT TO:<rcpt@example.com>', 250);
    const t0 = performance.now();
    await this.command('DATA', 354);
    this.c.write(message);
    this.c.write(CRLF_DOT_CRLF);
    await this.expect(250);
    return performance.now() - t0;
  }

  async quit(): Promise<void> {
    await this.command('QUIT', 221).catch(() => undefined);
    this.destroy();
  }

  destroy(): void {
    this.c.destroy();
  }
}
