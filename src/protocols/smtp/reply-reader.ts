import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../../errors.js';
import { SMTP_UPSTREAM_LIMITS } from './upstream-limits.js';

/** One SMTP reply (RFC 5321 §4.2): `NNN-text` continuation lines, then `NNN text`. */
export interface SmtpReply {
  /** The three-digit reply code, e.g. 250. */
  readonly code: number;
  /** Each line's text after `NNN-` / `NNN ` (without CRLF), in order; at least one. */
  readonly lines: readonly string[];
}

export interface ReplyLimits {
  readonly lineBytes: number;
  readonly replyLines: number;
  readonly replyBytes: number;
}

const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const HYPHEN = 0x2d;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;

function breach(detail: FailureDetail, what: string): ProxyError {
  return new ProxyError('protocol_error', `upstream SMTP reply: ${what}`, { detail });
}

function isDigit(b: number | undefined): b is number {
  return b !== undefined && b >= DIGIT_0 && b <= DIGIT_9;
}

/**
 * Byte-level reply parser: feed bytes, get complete replies. Lines end with CRLF or a bare LF;
 * every line and reply is bounded, a breach throws ProxyError('protocol_error').
 */
export class ReplyParser {
  private parts: Buffer[] = [];
  private lineLen = 0;
  private code = 0;
  private lines: string[] = [];
  private replyLen = 0;

  constructor(private readonly limits: ReplyLimits = SMTP_UPSTREAM_LIMITS) {}

  /**
   * Consumes `chunk` until one reply completes: returns it with the offset just past it, or
   * undefined once the whole chunk is consumed into a reply still incomplete.
   */
  feed(chunk: Buffer): { reply: SmtpReply; end: number } | undefined {
    let pos = 0;
    while (pos < chunk.length) {
      const lf = chunk.indexOf(LF, pos);
      const stop = lf < 0 ? chunk.length : lf;
      this.lineLen += stop - pos;
      // One byte of slack for the CR of a CRLF still to come.
      if (this.lineLen > this.limits.lineBytes + 1) throw breach('line_too_long', 'line too long');
      if (stop > pos) this.parts.push(chunk.subarray(pos, stop));
      if (lf < 0) return undefined;
      pos = lf + 1;
      const reply = this.endLine();
      if (reply) return { reply, end: pos };
    }
    return undefined;
  }

  private endLine(): SmtpReply | undefined {
    let line = Buffer.concat(this.parts, this.lineLen);
    this.parts = [];
    this.lineLen = 0;
    if (line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
    if (line.length > this.limits.lineBytes) throw breach('line_too_long', 'line too long');
    this.replyLen += line.length;
    if (this.replyLen > this.limits.replyBytes || this.lines.length >= this.limits.replyLines) {
      throw breach('message_too_long', 'reply too long');
    }
    const sep = line[3];
    if (
      !isDigit(line[0]) ||
      !isDigit(line[1]) ||
      !isDigit(line[2]) ||
      (sep !== undefined && sep !== SPACE && sep !== HYPHEN)
    ) {
      throw breach('unexpected_response', 'not a reply line');
    }
    const code = (line[0] - DIGIT_0) * 100 + (line[1] - DIGIT_0) * 10 + (line[2] - DIGIT_0);
    if (this.lines.length > 0 && code !== this.code) {
      throw breach('unexpected_response', 'reply code changed inside a multi-line reply');
    }
    this.code = code;
    this.lines.push(line.subarray(4).toString('utf8'));
    if (sep === HYPHEN) return undefined;
    const reply: SmtpReply = { code, lines: this.lines };
    this.lines = [];
    this.replyLen = 0;
    return reply;
  }
}

type Waiter = { resolve: (r: SmtpReply) => void; reject: (e: ProxyError) => void };

/**
 * Reads upstream replies one at a time, on demand: bytes are parsed only while someone waits
 * and parsing stops right behind each reply, so what follows stays raw for the splice.
 */
export class ReplyReader {
  private readonly parser: ReplyParser;
  /** Received, not yet parsed. */
  private queue: Buffer[] = [];
  /** Parsed into a reply not yet complete (kept raw so detach() loses nothing). */
  private partial: Buffer[] = [];
  private waiter: Waiter | undefined;
  private failure: ProxyError | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.queue.push(chunk);
    this.pump();
    // Bounded even when nobody is reading: a flooding upstream cannot grow memory.
    if (this.pendingBytes > this.limits.replyBytes) this.fail(breach('message_too_long', 'unread flood'));
  };
  private readonly onEnd = () =>
    this.fail(new ProxyError('upstream_unavailable', 'upstream closed', { detail: 'closed' }));
  private readonly onError = (err: Error) =>
    this.fail(
      new ProxyError('upstream_unavailable', 'upstream socket error', { cause: err, detail: 'socket_error' }),
    );

  constructor(
    private readonly socket: Duplex,
    private readonly limits: ReplyLimits = SMTP_UPSTREAM_LIMITS,
  ) {
    this.parser = new ReplyParser(limits);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    socket.resume();
  }

  /** Bytes received but not yet returned as a reply (e.g. an unsolicited 421 on an idle connection). */
  get pendingBytes(): number {
    let n = 0;
    for (const b of this.queue) n += b.length;
    for (const b of this.partial) n += b.length;
    return n;
  }

  /** True once the socket ended or a limit was breached. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** The next complete reply; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<SmtpReply> {
    if (this.waiter) return Promise.reject(new Error('ReplyReader.next called concurrently'));
    return new Promise<SmtpReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new ProxyError('timeout', 'upstream reply timed out', { detail: 'response_timeout' }));
      }, timeoutMs);
      this.waiter = {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      this.pump();
    });
  }

  /** Stops reading: removes the listeners, pauses the socket, returns the unread bytes. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.pause();
    const rest = Buffer.concat([...this.partial, ...this.queue]);
    this.partial = [];
    this.queue = [];
    return rest;
  }

  /** Parses queued bytes while someone waits; a waiter gets a failure only once no reply is left. */
  private pump(): void {
    // After a breach the parser's state is garbage: nothing more is parsed.
    const broken = this.failure?.reason === 'protocol_error';
    while (this.waiter && !broken) {
      const chunk = this.queue.shift();
      if (!chunk) break;
      let got: { reply: SmtpReply; end: number } | undefined;
      try {
        got = this.parser.feed(chunk);
      } catch (err) {
        this.partial.push(chunk);
        this.fail(err instanceof ProxyError ? err : breach('unexpected_response', 'unparsable'));
        return;
      }
      if (!got) {
        this.partial.push(chunk);
        continue;
      }
      if (got.end < chunk.length) this.queue.unshift(chunk.subarray(got.end));
      this.partial = [];
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve(got.reply);
    }
    this.settleFailure();
  }

  private fail(err: ProxyError): void {
    this.failure ??= err;
    this.settleFailure();
  }

  private settleFailure(): void {
    const w = this.waiter;
    if (!w || !this.failure) return;
    this.waiter = undefined;
    w.reject(this.failure);
  }
}
