import type { Duplex } from 'node:stream';
import { ProxyError } from '../../errors.js';
import { UPSTREAM_LIMITS } from './upstream-limits.js';

/** One upstream response: `*` untagged, `+` continuation, or a command tag. */
export interface UpstreamResponse {
  readonly tag: string;
  /** Upper-cased status or keyword after the tag (OK, NO, BAD, BYE, PREAUTH, CAPABILITY, …); '' for `+`. */
  readonly kind: string;
  /** The first line after the tag (and, for statuses, after the kind), without CRLF. */
  readonly text: string;
}

const LF = 0x0a;
const CR = 0x0d;
const RBRACE = 0x7d;
const LBRACE = 0x7b;
const PLUS = 0x2b;
const MINUS = 0x2d;

type Waiter = { resolve: (r: UpstreamResponse) => void; reject: (e: ProxyError) => void };

/**
 * Reads upstream responses one at a time, on demand, so that bytes past the last consumed
 * response stay raw in the buffer and can be handed to the splice untouched.
 */
export class ResponseReader {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: Waiter | undefined;
  private failure: ProxyError | undefined;
  private readonly onData = (chunk: Buffer) => {
    // Bounded even when nobody is reading: a flooding upstream cannot grow memory.
    if (this.buf.length + chunk.length > UPSTREAM_LIMITS.responseBytes) {
      this.fail(tooBig('buffer'));
      return;
    }
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    this.pump();
  };
  private readonly onEnd = () =>
    this.fail(new ProxyError('upstream_unavailable', 'upstream closed', { detail: 'closed' }));
  private readonly onError = (err: Error) =>
    this.fail(
      new ProxyError('upstream_unavailable', 'upstream socket error', { cause: err, detail: 'socket_error' }),
    );

  constructor(
    private readonly socket: Duplex,
    initial: Buffer = Buffer.alloc(0),
  ) {
    this.buf = initial;
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    socket.resume();
  }

  /** Bytes received but not yet consumed as a response (unsolicited data on an idle connection). */
  get pendingBytes(): number {
    return this.buf.length;
  }

  /** True once the socket ended or a limit was breached. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** The next complete response; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<UpstreamResponse> {
    if (this.waiter) return Promise.reject(new Error('ResponseReader.next called concurrently'));
    return new Promise<UpstreamResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new ProxyError('timeout', 'upstream response timed out', { detail: 'response_timeout' }));
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
    const rest = this.buf;
    this.buf = Buffer.alloc(0);
    return rest;
  }

  private fail(err: ProxyError): void {
    if (!this.failure) this.failure = err;
    this.pump();
  }

  private pump(): void {
    const w = this.waiter;
    if (!w) return;
    let parsed: { response: UpstreamResponse; end: number } | undefined;
    try {
      parsed = parseResponse(this.buf);
    } catch (err) {
      this.failure ??= err as ProxyError;
      parsed = undefined;
    }
    if (parsed) {
      this.waiter = undefined;
      this.buf = this.buf.subarray(parsed.end);
      w.resolve(parsed.response);
    } else if (this.failure) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }
}

function tooBig(what: string): ProxyError {
  return new ProxyError('protocol_error', `upstream ${what} over limit`, { detail: `${what}_too_long` });
}

/** `{n}` / `{n+}` / `{n-}` right before CRLF of the line [start, lf) → n, else -1. */
function literalLength(buf: Buffer, start: number, lf: number): number {
  let i = lf - 1;
  if (i >= start && buf[i] === CR) i--;
  if (i < start || buf[i] !== RBRACE) return -1;
  i--;
  if (i >= start && (buf[i] === PLUS || buf[i] === MINUS)) i--;
  let n = 0;
  let digits = 0;
  let mul = 1;
  while (i >= start && buf[i] >= 0x30 && buf[i] <= 0x39) {
    n += (buf[i] - 0x30) * mul;
    mul *= 10;
    digits++;
    i--;
    if (digits > 10) throw tooBig('literal');
  }
  if (digits === 0 || i < start || buf[i] !== LBRACE) return -1;
  return n;
}

/**
 * Parses one complete response from the front of `buf`, or returns undefined if more bytes
 * are needed. Counts literal bytes, never scans for CRLF inside a literal.
 */
export function parseResponse(buf: Buffer): { response: UpstreamResponse; end: number } | undefined {
  const L = UPSTREAM_LIMITS;
  let pos = 0;
  let firstLineEnd = -1;
  for (;;) {
    const lf = buf.indexOf(LF, pos);
    if (lf < 0) {
      if (buf.length - pos > L.lineBytes) throw tooBig('line');
      return undefined;
    }
    if (lf - pos > L.lineBytes) throw tooBig('line');
    if (firstLineEnd < 0) firstLineEnd = lf;
    const n = literalLength(buf, pos, lf);
    if (n < 0) {
      pos = lf + 1;
      break;
    }
    if (n > L.literalBytes) throw tooBig('literal');
    const after = lf + 1 + n;
    if (after > L.responseBytes) throw tooBig('response');
    if (buf.length < after) return undefined;
    pos = after;
  }
  let lineEnd = firstLineEnd;
  if (lineEnd > 0 && buf[lineEnd - 1] === CR) lineEnd--;
  const line = buf.toString('utf8', 0, lineEnd);
  return { response: splitLine(line), end: pos };
}

function splitLine(line: string): UpstreamResponse {
  const sp = line.indexOf(' ');
  const tag = sp < 0 ? line : line.slice(0, sp);
  const rest = sp < 0 ? '' : line.slice(sp + 1);
  if (tag === '+') return { tag, kind: '', text: rest };
  const sp2 = rest.indexOf(' ');
  const kind = (sp2 < 0 ? rest : rest.slice(0, sp2)).toUpperCase();
  return { tag, kind, text: sp2 < 0 ? '' : rest.slice(sp2 + 1) };
}
