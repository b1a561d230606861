import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../../errors.js';
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

const LF = 0x0a;
const CR = 0x0d;
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

/**
 * Byte-level response parser: feed bytes, get complete responses. Lines end with CRLF or a
 * bare LF; every line and response is bounded, a breach throws ProxyError('protocol_error').
 */
export class ResponseParser {
  private parts: Buffer[] = [];
  private lineLen = 0;
  /** Raw bytes of the response so far, line ends included. */
  private used = 0;
  /** The `+OK` status of a multi-line response whose body is being read. */
  private head: Pop3Response | undefined;
  private body: Buffer[] = [];

  constructor(private readonly limits: ResponseLimits = POP3_UPSTREAM_LIMITS) {}

  /**
   * Consumes `chunk` until one response completes: returns it with the offset just past it, or
   * undefined once the whole chunk went into a response still incomplete. `multiline` says how
   * a `+OK` status line is read (a body follows); a body already begun is always read to its end.
   */
  feed(
    chunk: Buffer,
    multiline: boolean,
  ): { response: Pop3Response | Pop3Multiline; end: number } | undefined {
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
      const response = this.endLine(multiline);
      if (response) return { response, end: pos };
    }
    return undefined;
  }

  private endLine(multiline: boolean): Pop3Response | Pop3Multiline | undefined {
    let line = Buffer.concat(this.parts, this.lineLen);
    this.used += this.lineLen + 1;
    this.parts = [];
    this.lineLen = 0;
    if (line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
    if (line.length > this.limits.lineBytes) throw breach('line_too_long', 'line too long');
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

type Waiter = {
  multiline: boolean;
  resolve: (r: Pop3Response | Pop3Multiline) => void;
  reject: (e: ProxyError) => void;
};

/**
 * Reads upstream responses one at a time, on demand: bytes are parsed only while someone waits
 * and parsing stops right behind each response, so what follows stays raw for the splice.
 */
export class Pop3ResponseReader {
  private readonly parser: ResponseParser;
  /** Received, not yet parsed. */
  private queue: Buffer[] = [];
  /** Parsed into a response not yet complete (kept raw so detach() loses nothing). */
  private partial: Buffer[] = [];
  private waiter: Waiter | undefined;
  private failure: ProxyError | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.queue.push(chunk);
    this.pump();
    // Bounded even when nobody is reading: a flooding upstream cannot grow memory.
    if (this.pendingBytes > this.limits.responseBytes) this.fail(breach('message_too_long', 'unread flood'));
  };
  private readonly onEnd = () =>
    this.fail(new ProxyError('upstream_unavailable', 'upstream closed', { detail: 'closed' }));
  private readonly onError = (err: Error) =>
    this.fail(
      new ProxyError('upstream_unavailable', 'upstream socket error', { cause: err, detail: 'socket_error' }),
    );

  constructor(
    private readonly socket: Duplex,
    private readonly limits: ResponseLimits = POP3_UPSTREAM_LIMITS,
  ) {
    this.parser = new ResponseParser(limits);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    socket.resume();
  }

  /** Bytes received but not yet returned as a response (e.g. an unsolicited `-ERR` while idle). */
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

  /** The next single-line response; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<Pop3Response> {
    return this.wait(false, timeoutMs);
  }

  /** The next response read as multi-line (CAPA, RETR …): a `+OK` with its body, or a single line. */
  async multiline(timeoutMs: number): Promise<Pop3Multiline> {
    const r = await this.wait(true, timeoutMs);
    return 'lines' in r ? r : { ...r, lines: [] };
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

  private wait(multiline: boolean, timeoutMs: number): Promise<Pop3Response | Pop3Multiline> {
    if (this.waiter) return Promise.reject(new Error('Pop3ResponseReader read called concurrently'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new ProxyError('timeout', 'upstream response timed out', { detail: 'response_timeout' }));
      }, timeoutMs);
      this.waiter = {
        multiline,
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

  /** Parses queued bytes while someone waits; a waiter gets a failure only once no response is left. */
  private pump(): void {
    // After a breach the parser's state is garbage: nothing more is parsed.
    const broken = this.failure?.reason === 'protocol_error';
    while (this.waiter && !broken) {
      const chunk = this.queue.shift();
      if (!chunk) break;
      let got: ReturnType<ResponseParser['feed']>;
      try {
        got = this.parser.feed(chunk, this.waiter.multiline);
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
      w.resolve(got.response);
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
