import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../../errors.js';
import { LineFramer, OnDemandReader } from '../../net/on-demand-reader.js';
import { POP3_UPSTREAM_LIMITS } from './upstream-limits.js';

/** `+OK`, `-ERR`, or a SASL continuation `+ ` (RFC 5034). */
export type Pop3Status = 'ok' | 'err' | 'continue';

/** One POP3 status line (RFC 1939 §3). */
export interface Pop3Response {
  readonly status: Pop3Status;
  /** What follows the indicator and its space, without the line end (a continuation's base64). */
  readonly text: string;
  /** The RFC 2449 response code in brackets, upper-cased ('IN-USE', 'SYS/TEMP'); undefined if none. */
  readonly code: string | undefined;
}

/** A response read as multi-line: a `+OK` carries its body, anything else none. */
export interface Pop3Multiline extends Pop3Response {
  /** Body lines without line ends, dot-unstuffed, the terminating "." excluded. */
  readonly lines: readonly Buffer[];
}

export interface ResponseLimits {
  /** One line without its line end. */
  readonly lineBytes: number;
  /** Body lines of one multi-line response. */
  readonly responseLines: number;
  /** One whole response as received (line ends and stuffing included). */
  readonly responseBytes: number;
}

const SPACE = 0x20;
const PLUS = 0x2b;
const MINUS = 0x2d;
const DOT = 0x2e;
const CASE_BIT = 0x20;
const UPPER_O = 0x4f;
const UPPER_K = 0x4b;
const UPPER_E = 0x45;
const UPPER_R = 0x52;

function breach(detail: FailureDetail, what: string): ProxyError {
  return new ProxyError('protocol_error', `upstream POP3 response: ${what}`, { detail });
}

/** Is byte `b` the ASCII letter `upper` in either case? */
function letter(b: number | undefined, upper: number): boolean {
  return b !== undefined && (b | CASE_BIT) === (upper | CASE_BIT);
}

/** Does the indicator end at `at` (end of line or a space)? */
function endsAt(line: Buffer, at: number): boolean {
  return line.length === at || line[at] === SPACE;
}

/** Reads the status indicator of `line`; anything that is not one is a protocol error. */
export function parseStatusLine(line: Buffer): Pop3Response {
  let status: Pop3Status;
  let at: number;
  if (line[0] === PLUS && letter(line[1], UPPER_O) && letter(line[2], UPPER_K) && endsAt(line, 3)) {
    status = 'ok';
    at = 3;
  } else if (line[0] === PLUS && endsAt(line, 1)) {
    status = 'continue';
    at = 1;
  } else if (
    line[0] === MINUS &&
    letter(line[1], UPPER_E) &&
    letter(line[2], UPPER_R) &&
    letter(line[3], UPPER_R) &&
    endsAt(line, 4)
  ) {
    status = 'err';
    at = 4;
  } else {
    throw breach('unexpected_response', 'not a status line');
  }
  const text = line.subarray(at + 1).toString('utf8');
  const code = status === 'continue' ? undefined : /^\[([^\]\s]{1,64})\]/.exec(text)?.[1]?.toUpperCase();
  return { status, text, code };
}

/** What one read yields: a status line, or a multi-line `+OK` with its body. */
type Parsed = Pop3Response | Pop3Multiline;

/**
 * Byte-level response parser: feed bytes, get complete responses. Lines end with CRLF or a
 * bare LF; every line and response is bounded, a breach throws ProxyError('protocol_error').
 */
export class ResponseParser extends LineFramer<Parsed, boolean> {
  /** Raw bytes of the response so far, line ends included. */
  private used = 0;
  /** The `+OK` status of a multi-line response whose body is being read. */
  private head: Pop3Response | undefined;
  private body: Buffer[] = [];

  constructor(private readonly limits: ResponseLimits = POP3_UPSTREAM_LIMITS) {
    super(limits.lineBytes, breach);
  }

  /**
   * Consumes `chunk` until one response completes: returns it with the offset just past it, or
   * undefined once the whole chunk went into a response still incomplete. `multiline` says how
   * a `+OK` status line is read (a body follows); a body already begun is always read to its end.
   */
  feed(chunk: Buffer, multiline: boolean): { response: Parsed; end: number } | undefined {
    const got = this.parse(chunk, multiline);
    return got && { response: got.value, end: got.end };
  }

  /** A status line, and for a multi-line `+OK` its body up to the "." line. */
  protected line(line: Buffer, wireBytes: number, multiline: boolean): Parsed | undefined {
    this.used += wireBytes;
    if (this.used > this.limits.responseBytes) throw breach('message_too_long', 'response too long');
    const head = this.head;
    if (!head) {
      const status = parseStatusLine(line);
      if (multiline && status.status === 'ok') {
        this.head = status;
        return undefined;
      }
      this.used = 0;
      return status;
    }
    if (line.length === 1 && line[0] === DOT) {
      const done: Pop3Multiline = { ...head, lines: this.body };
      this.head = undefined;
      this.body = [];
      this.used = 0;
      return done;
    }
    if (this.body.length >= this.limits.responseLines) throw breach('message_too_long', 'too many lines');
    // Byte-stuffing (RFC 1939 §3): a line that starts with "." was sent with one more.
    this.body.push(line[0] === DOT ? line.subarray(1) : line);
    return undefined;
  }
}

/**
 * Reads upstream responses one at a time, on demand: bytes are parsed only while someone waits
 * and parsing stops right behind each response, so what follows stays raw for the splice.
 */
export class Pop3ResponseReader extends OnDemandReader<Parsed, boolean> {
  constructor(socket: Duplex, limits: ResponseLimits = POP3_UPSTREAM_LIMITS) {
    super(socket, new ResponseParser(limits), {
      unreadBytes: limits.responseBytes,
      noun: 'response',
      breach,
    });
  }

  /** The next single-line response; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<Pop3Response> {
    return this.read(false, timeoutMs);
  }

  /** The next response read as multi-line (CAPA, RETR …): a `+OK` with its body, or a single line. */
  async multiline(timeoutMs: number): Promise<Pop3Multiline> {
    const r = await this.read(true, timeoutMs);
    return 'lines' in r ? r : { ...r, lines: [] };
  }
}
