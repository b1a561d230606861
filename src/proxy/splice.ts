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
  const stats: SpliceStats = { clientToUpstream: 0, upstreamToClient: 0 };
  const c2u = metrics.splicedBytes.labels('client_to_upstream');
  const u2c = metrics.splicedBytes.labels('upstream_to_client');
  tune(client);
  tune(up);

  if (upstream.buffered.length > 0) {
    client.write(upstream.buffered);
    stats.upstreamToClient += upstream.buffered.length;
    u2c.inc(upstream.buffered.length);
  }
  if (pipelined.length > 0) {
    up.write(pipelined);
    stats.clientToUpstream += pipelined.length;
    c2u.inc(pipelined.length);
  }
  client.on('data', (b: Buffer) => {
    stats.clientToUpstream += b.length;
    c2u.inc(b.length);
  });
  up.on('data', (b: Buffer) => {
    stats.upstreamToClient += b.length;
    u2c.inc(b.length);
  });

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
