import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { AuthenticatedUpstream } from '../core/upstream.js';
import type { Metrics } from '../metrics.js';

export interface SpliceOptions {
  readonly client: Duplex;
  readonly upstream: AuthenticatedUpstream;
  /** Bytes the client sent behind its login command, forwarded upstream first, in order. */
  readonly pipelined: Buffer;
  /** Metric label of the spliced bytes. */
  readonly protocol: string;
  readonly metrics: Pick<Metrics, 'splicedBytes' | 'splicedSource'>;
  /** Called exactly once when both sides are closed. */
  readonly release: () => void;
}

export interface SpliceStats {
  clientToUpstream: number;
  upstreamToClient: number;
}

/** Once one direction is done, the other gets this long to finish before both are destroyed. */
const HALF_CLOSE_GRACE_MS = 5000;

function tune(s: Duplex): void {
  if (!(s instanceof Socket)) return;
  s.setKeepAlive(true, 60_000);
  s.setNoDelay(true);
  // No proxy idle timeout after login: the mail server and the client decide.
  s.setTimeout(0);
}

/** Bytes read so far from a stream: the socket's own counter, or a 'data' tally for other Duplexes. */
function readCounter(s: Duplex): () => number {
  if (s instanceof Socket) return () => s.bytesRead;
  let n = 0;
  s.on('data', (b: Buffer) => {
    n += b.length;
  });
  return () => n;
}

type Spliced = SpliceOptions['metrics'];

/**
 * Counts one session's bytes from the sockets' own counters instead of a listener and a
 * prom-client call per chunk; reaches the counter at every scrape and once more at close.
 */
class ByteMeter {
  private static readonly live = new Map<Spliced, Set<ByteMeter>>();
  private readonly fromClient: () => number;
  private readonly fromUpstream: () => number;
  private readonly base: { c: number; u: number };
  private reported = { c: 0, u: 0 };

  constructor(
    client: Duplex,
    up: Duplex,
    private readonly extra: { c: number; u: number },
    private readonly metrics: Spliced,
    private readonly protocol: string,
  ) {
    this.fromClient = readCounter(client);
    this.fromUpstream = readCounter(up);
    this.base = { c: this.fromClient(), u: this.fromUpstream() };
    let set = ByteMeter.live.get(metrics);
    if (!set) {
      const meters = new Set<ByteMeter>();
      set = meters;
      ByteMeter.live.set(metrics, meters);
      metrics.splicedSource.flush = () => {
        for (const m of meters) m.flush();
      };
    }
    set.add(this);
  }

  private flush(): SpliceStats {
    const now = {
      clientToUpstream: this.extra.c + this.fromClient() - this.base.c,
      upstreamToClient: this.extra.u + this.fromUpstream() - this.base.u,
    };
    const dc = now.clientToUpstream - this.reported.c;
    const du = now.upstreamToClient - this.reported.u;
    if (dc > 0)
      this.metrics.splicedBytes.inc({ protocol: this.protocol, direction: 'client_to_upstream' }, dc);
    if (du > 0)
      this.metrics.splicedBytes.inc({ protocol: this.protocol, direction: 'upstream_to_client' }, du);
    this.reported = { c: now.clientToUpstream, u: now.upstreamToClient };
    return now;
  }

  /** Final count; the registry's hook goes with its last session. */
  close(): SpliceStats {
    const set = ByteMeter.live.get(this.metrics);
    set?.delete(this);
    if (set?.size === 0) {
      ByteMeter.live.delete(this.metrics);
      this.metrics.splicedSource.flush = undefined;
    }
    return this.flush();
  }
}

const PREMATURE = Object.assign(new Error('closed before the stream ended'), {
  code: 'ERR_STREAM_PREMATURE_CLOSE',
});

/**
 * One direction: src.pipe(dst) (pause/drain backpressure, dst ended when src ends); `done`
 * fires once: null when dst has finished, else the first error or premature close. Not
 * stream.pipeline(): it allocates AbortControllers and throws DOMExceptions per session,
 * which showed in the profile of a 5,000-session ramp.
 */
function join(src: Duplex, dst: Duplex, done: (err: Error | null) => void): void {
  let settled = false;
  const settle = (err: Error | null) => {
    if (settled) return;
    settled = true;
    done(err);
  };
  // Ended before the splice began (a withdrawn account, a client gone): 'close' will not come again.
  if (src.destroyed || dst.destroyed) {
    settle(PREMATURE);
    return;
  }
  dst.once('finish', () => settle(null));
  src.on('error', settle);
  dst.on('error', settle);
  src.once('close', () => {
    if (!src.readableEnded) settle(PREMATURE);
  });
  dst.once('close', () => {
    if (!dst.writableFinished) settle(PREMATURE);
  });
  src.pipe(dst);
}

/**
 * Joins the client and the authenticated upstream byte for byte, with backpressure both
 * ways; either side failing tears the other down, a clean end gets a short grace period.
 */
export function splice(opts: SpliceOptions): Promise<SpliceStats> {
  const { client, upstream, pipelined, metrics } = opts;
  const up = upstream.socket;
  tune(client);
  tune(up);
  // Bytes already read before the splice (the upstream's tail, the client's pipelined commands) count too.
  const meter = new ByteMeter(
    client,
    up,
    { c: pipelined.length, u: upstream.buffered.length },
    metrics,
    opts.protocol,
  );
  if (upstream.buffered.length > 0) client.write(upstream.buffered);
  if (pipelined.length > 0) up.write(pipelined);

  return new Promise((resolve) => {
    let open = 2;
    let grace: NodeJS.Timeout | undefined;
    let released = false;
    const teardown = () => {
      client.destroy();
      up.destroy();
    };
    const done = (err: Error | null) => {
      open--;
      if (err) teardown();
      else if (open === 1) grace = setTimeout(teardown, HALF_CLOSE_GRACE_MS);
      if (open > 0) return;
      clearTimeout(grace);
      teardown();
      const stats = meter.close();
      if (!released) {
        released = true;
        opts.release();
      }
      resolve(stats);
    };
    // Both were paused during login; pipe() resumes them.
    join(client, up, done);
    join(up, client, done);
  });
}
