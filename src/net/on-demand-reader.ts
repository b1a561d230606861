import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../errors.js';

const LF = 0x0a;
const CR = 0x0d;

/** A protocol's own error for a breach of its grammar or limits. */
export type Breach = (detail: FailureDetail, what: string) => ProxyError;

/** Turns bytes into replies: a protocol's parser, its state kept across chunks. */
export interface Framer<R, M> {
  /**
   * Consumes `chunk` until one reply completes: returns it with the offset just past it, or
   * undefined once the whole chunk went into a reply still incomplete. `mode` is what the
   * waiting read asked for. Throws ProxyError on a breach.
   */
  parse(chunk: Buffer, mode: M): { value: R; end: number } | undefined;
}

/**
 * Splits bytes into lines for a line-based reply grammar (SMTP, POP3), which a protocol
 * supplies as `line()`. Lines end with CRLF or a bare LF; a line longer than `lineBytes`
 * (without its line end) throws `line_too_long`, even before its LF arrives.
 */
export abstract class LineFramer<R, M> implements Framer<R, M> {
  private parts: Buffer[] = [];
  private lineLen = 0;

  constructor(
    private readonly lineBytes: number,
    private readonly breach: Breach,
  ) {}

  /**
   * One line without its line end, and its size on the wire (line end included); returns the
   * reply it completes, if any. Throws ProxyError on what is not the grammar's.
   */
  protected abstract line(line: Buffer, wireBytes: number, mode: M): R | undefined;

  parse(chunk: Buffer, mode: M): { value: R; end: number } | undefined {
    let pos = 0;
    while (pos < chunk.length) {
      const lf = chunk.indexOf(LF, pos);
      const stop = lf < 0 ? chunk.length : lf;
      this.lineLen += stop - pos;
      // One byte of slack for the CR of a CRLF still to come.
      if (this.lineLen > this.lineBytes + 1) throw this.breach('line_too_long', 'line too long');
      if (stop > pos) this.parts.push(chunk.subarray(pos, stop));
      if (lf < 0) return undefined;
      pos = lf + 1;
      const value = this.endLine(mode);
      if (value !== undefined) return { value, end: pos };
    }
    return undefined;
  }

  private endLine(mode: M): R | undefined {
    let line = Buffer.concat(this.parts, this.lineLen);
    const wireBytes = this.lineLen + 1;
    this.parts = [];
    this.lineLen = 0;
    if (line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
    if (line.length > this.lineBytes) throw this.breach('line_too_long', 'line too long');
    return this.line(line, wireBytes, mode);
  }
}

export interface OnDemandReaderOptions {
  /** Unread bytes held while nobody reads; more fails the reader (a flooding upstream). */
  readonly unreadBytes: number;
  /** What one reply is called in a timeout's message ('reply', 'response'). */
  readonly noun: string;
  readonly breach: Breach;
  /** Bytes already read from the socket, parsed before anything that arrives later. */
  readonly initial?: Buffer;
}

type Waiter<R, M> = { mode: M; resolve: (r: R) => void; reject: (e: ProxyError) => void };

/**
 * Reads an upstream's replies one at a time, on demand, whatever the protocol: bytes are parsed
 * only while someone waits and parsing stops right behind each reply, so what follows stays raw
 * for the splice. Each read has a deadline; a close, socket error or breach fails the reader, but
 * only once the replies received before it have been read.
 */
export class OnDemandReader<R, M = undefined> {
  /** Received, not yet parsed. */
  private queue: Buffer[] = [];
  /** Parsed into a reply not yet complete (kept raw so detach() loses nothing). */
  private partial: Buffer[] = [];
  private waiter: Waiter<R, M> | undefined;
  private failure: ProxyError | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.queue.push(chunk);
    this.pump();
    // Bounded even when nobody is reading: a flooding upstream cannot grow memory.
    if (this.pendingBytes > this.options.unreadBytes) {
      this.fail(this.options.breach('message_too_long', 'unread flood'));
    }
  };
  private readonly onEnd = () =>
    this.fail(new ProxyError('upstream_unavailable', 'upstream closed', { detail: 'closed' }));
  private readonly onError = (err: Error) =>
    this.fail(
      new ProxyError('upstream_unavailable', 'upstream socket error', { cause: err, detail: 'socket_error' }),
    );

  constructor(
    private readonly socket: Duplex,
    private readonly framer: Framer<R, M>,
    private readonly options: OnDemandReaderOptions,
  ) {
    if (options.initial && options.initial.length > 0) this.queue.push(options.initial);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    socket.resume();
  }

  /** Bytes received but not yet returned as a reply (e.g. unsolicited ones on an idle connection). */
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

  /** The next complete reply read as `mode` says; rejects with ProxyError on close, breach or timeout. */
  read(mode: M, timeoutMs: number): Promise<R> {
    if (this.waiter) return Promise.reject(new Error(`${this.constructor.name} read called concurrently`));
    return new Promise<R>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(
          new ProxyError('timeout', `upstream ${this.options.noun} timed out`, {
            detail: 'response_timeout',
          }),
        );
      }, timeoutMs);
      this.waiter = {
        mode,
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
      let got: { value: R; end: number } | undefined;
      try {
        got = this.framer.parse(chunk, this.waiter.mode);
      } catch (err) {
        this.partial.push(chunk);
        this.fail(err instanceof ProxyError ? err : this.options.breach('unexpected_response', 'unparsable'));
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
      w.resolve(got.value);
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
