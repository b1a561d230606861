import type { Duplex } from 'node:stream';
import { type FailureDetail, ProxyError } from '../../errors.js';
import { type Framer, OnDemandReader } from '../../net/on-demand-reader.js';
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

function breach(reason: FailureDetail): ProxyError {
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

/** The one IMAP framing, fed chunk by chunk and stopped right behind each response. */
class ResponseFramer implements Framer<UpstreamResponse, undefined> {
  private got: RawCommand | undefined;
  private failure: SplitError | undefined;
  private readonly splitter: Splitter = new Splitter(UPSTREAM_FRAMING, {
    command: (cmd) => {
      this.got = cmd;
      this.splitter.pause();
    },
    // Server literals are never synchronizing: nothing to answer.
    continuation: () => {},
    error: (reason) => {
      this.failure = reason;
    },
  });

  parse(chunk: Buffer): { value: UpstreamResponse; end: number } | undefined {
    this.splitter.push(chunk);
    if (this.failure) throw breach(this.failure);
    const cmd = this.got;
    if (!cmd) return undefined;
    this.got = undefined;
    // The paused splitter holds the rest of this chunk; it goes back raw with the offset.
    const end = chunk.length - this.splitter.takePending().length;
    this.splitter.resume();
    return { value: toResponse(cmd), end };
  }
}

/**
 * Parses one complete response from the front of `buf` with the shared framing, or returns
 * undefined when more bytes are needed; throws ProxyError('protocol_error') on a breach.
 */
export function parseResponse(buf: Buffer): { response: UpstreamResponse; end: number } | undefined {
  const got = new ResponseFramer().parse(buf);
  return got && { response: got.value, end: got.end };
}

/**
 * Reads upstream responses one at a time, on demand, so that bytes past the last consumed
 * response stay raw and can be handed to the splice untouched: the framing runs only while
 * someone waits and stops right behind each response.
 */
export class ResponseReader extends OnDemandReader<UpstreamResponse> {
  constructor(socket: Duplex, initial: Buffer = Buffer.alloc(0)) {
    super(socket, new ResponseFramer(), {
      unreadBytes: UPSTREAM_LIMITS.responseBytes,
      noun: 'response',
      breach,
      initial,
    });
  }

  /** The next complete response; rejects with ProxyError on close, limit breach or timeout. */
  next(timeoutMs: number): Promise<UpstreamResponse> {
    return this.read(undefined, timeoutMs);
  }
}
