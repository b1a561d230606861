import type { Duplex } from 'node:stream';
import { ProxyError } from '../../errors.js';
import { type FramingLimits, type RawCommand, type SplitError, Splitter } from './framing.js';
import { UPSTREAM_LIMITS } from './upstream-limits.js';

/** One upstream response: `*` untagged, `+` continuation, or a command tag. */
export interface UpstreamResponse {
  readonly tag: string;
  /** Upper-cased status or keyword after the tag (OK, NO, BAD, BYE, PREAUTH, CAPABILITY, …); '' for `+`. */
  readonly kind: string;
  /** The first line after the tag (and, for statuses, after the kind), without CRLF. */
  readonly text: string;
}

/** The upstream direction's bounds for the one IMAP framing (see framing.ts). */
const UPSTREAM_FRAMING: FramingLimits = {
  lineBytes: UPSTREAM_LIMITS.lineBytes,
  literalBytes: UPSTREAM_LIMITS.literalBytes,
  literalsPerCommand: UPSTREAM_LIMITS.literalsPerResponse,
  commandBytes: UPSTREAM_LIMITS.responseBytes,
};

type Waiter = { resolve: (r: UpstreamResponse) => void; reject: (e: ProxyError) => void };

function breach(reason: SplitError): ProxyError {
  return new ProxyError('protocol_error', `upstream ${reason.replace(/_/g, ' ')}`, { detail: reason });
}

function toResponse(cmd: RawCommand): UpstreamResponse {
  const line = (cmd.lines[0] ?? Buffer.alloc(0)).toString('utf8');
  const sp = line.indexOf(' ');
  const tag = sp < 0 ? line : line.slice(0, sp);
  const rest = sp < 0 ? '' : line.slice(sp + 1);
  if (tag === '+') return { tag, kind: '', text: rest };
  const sp2 = rest.indexOf(' ');
  const kind = (sp2 < 0 ? rest : rest.slice(0, sp2)).toUpperCase();
  return { tag, kind, text: sp2 < 0 ? '' : rest.slice(sp2 + 1) };
}

/**
 * Parses one complete response from the front of `buf` with the shared framing, or returns
 * undefined when more bytes are needed; throws ProxyError('protocol_error') on a breach.
 */
export function parseResponse(buf: Buffer): { response: UpstreamResponse; end: number } | undefined {
  let got: RawCommand | undefined;
  let failed: SplitError | undefined;
  const splitter: Splitter = new Splitter(UPSTREAM_FRAMING, {
    command: (cmd) => {
      got = cmd;
      splitter.pause();
    },
    continuation: () => {},
    error: (reason) => {
      failed = reason;
    },
  });
  splitter.push(buf);
  if (failed) throw breach(failed);
  if (!got) return undefined;
  return { response: toResponse(got), end: buf.length - splitter.takePending().length };
}

/**
 * Reads upstream responses one at a time, on demand, so that bytes past the last consumed
 * response stay raw and can be handed to the splice untouched: the splitter runs only while
 * someone waits and pauses right behind each response.
 */
export class ResponseReader {
  private readonly splitter: Splitter;
  private waiter: Waiter | undefined;
  private failure: ProxyError | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.splitter.push(chunk);
    // Bounded even when nobody is reading: a flooding upstream cannot grow memory.
    if (this.splitter.bufferedBytes > UPSTREAM_LIMITS.responseBytes) this.fail(breach('message_too_long'));
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
    this.splitter = new Splitter(UPSTREAM_FRAMING, {
      command: (cmd) => this.deliver(cmd),
      // Server literals are never synchronizing: nothing to answer.
      continuation: () => {},
      error: (reason) => this.fail(breach(reason)),
    });
    this.splitter.pause();
    if (initial.length > 0) this.splitter.push(initial);
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onEnd);
    socket.on('error', this.onError);
    socket.resume();
  }

  /** Bytes received but not yet consumed as a response (unsolicited data on an idle connection). */
  get pendingBytes(): number {
    return this.splitter.bufferedBytes;
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
        // A half-read response stays in the splitter; the rest waits unparsed for the next reader.
        this.splitter.pause();
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
      this.splitter.resume();
      this.settleFailure();
    });
  }

  /** Stops reading: removes the listeners, pauses the socket, returns the unread bytes. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.pause();
    return this.splitter.takePending();
  }

  private deliver(cmd: RawCommand): void {
    this.splitter.pause();
    const w = this.waiter;
    this.waiter = undefined;
    w?.resolve(toResponse(cmd));
  }

  private fail(err: ProxyError): void {
    this.failure ??= err;
    this.settleFailure();
  }

  /** A waiter gets the failure only once no complete response is left to give it. */
  private settleFailure(): void {
    const w = this.waiter;
    if (!w || !this.failure) return;
    this.waiter = undefined;
    w.reject(this.failure);
  }
}
