import type { Socket } from 'node:net';
import { type Duplex, pipeline } from 'node:stream';
import type { Metrics } from '../metrics.js';
import type { AuthenticatedUpstream } from '../upstream/types.js';

export interface SpliceOptions {
  readonly client: Duplex;
  readonly upstream: AuthenticatedUpstream;
  /** Bytes the client sent behind its login command, forwarded upstream first, in order. */
  readonly pipelined: Buffer;
  readonly metrics: Pick<Metrics, 'splicedBytes'>;
  /** Called exactly once when both sides are closed. */
  readonly release: () => void;
}

export interface SpliceStats {
  clientToUpstream: number;
  upstreamToClient: number;
}

/** Once one direction is done, the other gets this long to finish before both are destroyed. */
const HALF_CLOSE_GRACE_MS = 5000;
/** How often bytes of live sessions reach the counter (and once more at close). */
const METER_FLUSH_MS = 5000;

/** Bytes read so far from a stream: the socket's own counter, or a 'data' tally for other Duplexes. */
function readCounter(s: Duplex): () => number {
  const sock = s as Partial<Socket>;
  if (typeof sock.bytesRead === 'number') return () => sock.bytesRead ?? 0;
  let n = 0;
  s.on('data', (b: Buffer) => {
    n += b.length;
  });
  return () => n;
}

/**
 * Counts one session's bytes from the sockets' own counters instead of a listener and a
 * prom-client call per chunk (measurable on the data path); flushed by one shared timer.
 */
class ByteMeter {
  private static readonly live = new Set<ByteMeter>();
  private static timer: NodeJS.Timeout | undefined;
  private readonly fromClient: () => number;
  private readonly fromUpstream: () => number;
  private readonly base: { c: number; u: number };
  private reported = { c: 0, u: 0 };

  constructor(
    client: Duplex,
    up: Duplex,
    private readonly extra: { c: number; u: number },
    private readonly counters: { c2u: { inc(n: number): void }; u2c: { inc(n: number): void } },
  ) {
    this.fromClient = readCounter(client);
    this.fromUpstream = readCounter(up);
    this.base = { c: this.fromClient(), u: this.fromUpstream() };
    ByteMeter.live.add(this);
    ByteMeter.timer ??= setInterval(() => {
      for (const m of ByteMeter.live) m.flush();
    }, METER_FLUSH_MS).unref();
  }

  stats(): SpliceStats {
    return {
      clientToUpstream: this.extra.c + this.fromClient() - this.base.c,
      upstreamToClient: this.extra.u + this.fromUpstream() - this.base.u,
    };
  }

  flush(): SpliceStats {
    const now = this.stats();
    const dc = now.clientToUpstream - this.reported.c;
    const du = now.upstreamToClient - this.reported.u;
    if (dc > 0) this.counters.c2u.inc(dc);
    if (du > 0) this.counters.u2c.inc(du);
    this.reported = { c: now.clientToUpstream, u: now.upstreamToClient };
    return now;
  }

  /** Final count; the shared timer stops with the last session. */
  close(): SpliceStats {
    ByteMeter.live.delete(this);
    if (ByteMeter.live.size === 0 && ByteMeter.timer) {
      clearInterval(ByteMeter.timer);
      ByteMeter.timer = undefined;
    }
    return this.flush();
  }
}

function tune(s: Duplex): void {
  const sock = s as Partial<Socket>;
  sock.setKeepAlive?.(true, 60_000);
  sock.setNoDelay?.(true);
  // No proxy idle timeout after login: the mail server and the client decide.
  sock.setTimeout?.(0);
}

/**
 * Joins the client and the authenticated upstream byte for byte. Node's pipeline() does
 * pause/drain both ways; either side closing or failing tears the other down.
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
    {
      c2u: metrics.splicedBytes.labels('client_to_upstream'),
      u2c: metrics.splicedBytes.labels('upstream_to_client'),
    },
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
    const done = (err: NodeJS.ErrnoException | null) => {
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
    pipeline(client, up, done);
    pipeline(up, client, done);
    // Both were paused during login; pipeline() resumes them.
  });
}
