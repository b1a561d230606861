import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../../errors.js';
import { LineFramer, OnDemandReader } from '../../net/on-demand-reader.js';
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
export class ReplyParser extends LineFramer<SmtpReply, undefined> {
  private code = 0;
  private lines: string[] = [];
  private replyLen = 0;

  constructor(private readonly limits: ReplyLimits = SMTP_UPSTREAM_LIMITS) {
    super(limits.lineBytes, breach);
  }

  /**
   * Consumes `chunk` until one reply completes: returns it with the offset just past it, or
   * undefined once the whole chunk is consumed into a reply still incomplete.
   */
  feed(chunk: Buffer): { reply: SmtpReply; end: number } | undefined {
    const got = this.parse(chunk, undefined);
    return got && { reply: got.value, end: got.end };
  }

  /** `NNN-` lines gather until `NNN ` ends the reply. */
  protected line(line: Buffer): SmtpReply | undefined {
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

/**
 * Reads upstream replies one at a time, on demand: bytes are parsed only while someone waits
 * and parsing stops right behind each reply, so what follows stays raw for the splice.
 */
export class ReplyReader extends OnDemandReader<SmtpReply> {
  constructor(socket: Duplex, limits: ReplyLimits = SMTP_UPSTREAM_LIMITS) {
    super(socket, new ReplyParser(limits), { unreadBytes: limits.replyBytes, noun: 'reply', breach });
  }

  /** The next complete reply; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<SmtpReply> {
    return this.read(undefined, timeoutMs);
  }
}
