import type {
  AuthenticatedUpstream,
  UpstreamConnection,
  UpstreamConnector,
  UpstreamTarget,
} from '../core/upstream.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { UPSTREAM_LIMITS } from '../protocols/imap/upstream-limits.js';

/** After a failed background dial, no refill for this long (a down upstream is not hammered). */
const REFILL_BACKOFF_MS = 5000;

/** The connection settings that make two targets interchangeable before authentication. */
export function targetKey(t: UpstreamTarget): string {
  return JSON.stringify([t.host, t.port, t.tls, t.servername ?? '', t.ca_file ?? '']);
}

interface Idle {
  readonly conn: UpstreamConnection;
  readonly timer: NodeJS.Timeout;
}

interface Slot {
  readonly key: string;
  readonly idle: Idle[];
  dialing: number;
  backoffUntil: number;
}

/** A pre-dialled connection handed out once: marks it `warm` so a stale one can be retried on a fresh dial. */
class WarmConnection implements UpstreamConnection {
  readonly warm = true;
  constructor(private readonly inner: UpstreamConnection) {}
  get capabilities(): readonly string[] {
    return this.inner.capabilities;
  }
  get reusable(): boolean {
    return this.inner.reusable;
  }
  authenticate(user: string, accessToken: string): Promise<AuthenticatedUpstream> {
    return this.inner.authenticate(user, accessToken);
  }
  destroy(): void {
    this.inner.destroy();
  }
}

export interface WarmPoolOptions {
  /** Connections kept ready per target; 0 turns the pool off. */
  size?: number;
  /** Connections kept ready (or being dialled) over all targets together. */
  maxTotal?: number;
  idleMs?: number;
  log?: Logger;
}

/**
 * Keeps up to `size` upstream connections per target dialled ahead (TLS, greeting, capabilities
 * done), so a login pays only AUTHENTICATE. Refilled only when logins arrive, so an unused target
 * drains to zero after `idleMs`; at most `maxTotal` over all targets. A connection leaves the
 * pool for one login and never comes back: nothing is shared between accounts.
 */
export class WarmPool implements UpstreamConnector {
  private readonly slots = new Map<string, Slot>();
  private readonly log: Logger;
  private readonly size: number;
  private readonly idleMs: number;
  private readonly maxTotal: number;
  /** Idle plus dialling, over all targets. */
  private pooled = 0;
  private closed = false;

  constructor(
    private readonly inner: UpstreamConnector,
    opts: WarmPoolOptions = {},
  ) {
    this.log = opts.log ?? silentLogger;
    this.size = opts.size ?? UPSTREAM_LIMITS.warmConnections;
    this.idleMs = opts.idleMs ?? UPSTREAM_LIMITS.warmIdleMs;
    this.maxTotal = opts.maxTotal ?? UPSTREAM_LIMITS.warmConnectionsTotal;
  }

  /** A dial that never takes from the pool (a retry after a stale warm connection). */
  connectFresh(
    target: UpstreamTarget,
    labels: { provider: string },
    signal?: AbortSignal,
  ): Promise<UpstreamConnection> {
    return this.inner.connect(target, labels, signal);
  }

  async connect(
    target: UpstreamTarget,
    labels: { provider: string },
    signal?: AbortSignal,
  ): Promise<UpstreamConnection> {
    if (this.closed || this.size === 0) return this.inner.connect(target, labels, signal);
    const key = targetKey(target);
    let slot = this.slots.get(key);
    if (!slot) {
      slot = { key, idle: [], dialing: 0, backoffUntil: 0 };
      this.slots.set(key, slot);
    }
    const warm = this.take(slot);
    if (warm) {
      this.refill(slot, target, labels);
      return warm;
    }
    // Warm up only behind a dial that worked: a down upstream sees no extra background dials.
    const conn = await this.inner.connect(target, labels, signal);
    this.refill(slot, target, labels);
    return conn;
  }

  /** Idle connections per target key (for tests and debugging). */
  idleCount(target: UpstreamTarget): number {
    return this.slots.get(targetKey(target))?.idle.length ?? 0;
  }

  /** Closes every idle connection; later connects go straight to the inner connector. */
  close(): void {
    this.closed = true;
    for (const slot of this.slots.values()) {
      for (const i of slot.idle.splice(0)) this.drop(i);
    }
    this.slots.clear();
    this.pooled = 0;
  }

  /** Newest first: the one least likely to have been closed by the server. */
  private take(slot: Slot): UpstreamConnection | undefined {
    for (let i = slot.idle.pop(); i; i = slot.idle.pop()) {
      clearTimeout(i.timer);
      this.pooled--;
      if (i.conn.reusable) return new WarmConnection(i.conn);
      i.conn.destroy();
      this.log.debug('warm upstream connection was stale; dropped');
    }
    return undefined;
  }

  /** A target nobody logs in to any more costs nothing. */
  private forgetIfEmpty(slot: Slot): void {
    if (slot.idle.length === 0 && slot.dialing === 0 && this.slots.get(slot.key) === slot) {
      this.slots.delete(slot.key);
    }
  }

  private drop(i: Idle): void {
    clearTimeout(i.timer);
    i.conn.destroy();
  }

  private refill(slot: Slot, target: UpstreamTarget, labels: { provider: string }): void {
    if (Date.now() < slot.backoffUntil) return;
    const want = Math.min(this.size - slot.idle.length - slot.dialing, this.maxTotal - this.pooled);
    for (let n = 0; n < want; n++) {
      slot.dialing++;
      this.pooled++;
      this.inner.connect(target, labels).then(
        (conn) => {
          slot.dialing--;
          if (this.closed) {
            conn.destroy();
            return;
          }
          const idle: Idle = {
            conn,
            timer: setTimeout(() => {
              const at = slot.idle.indexOf(idle);
              if (at >= 0) {
                slot.idle.splice(at, 1);
                this.pooled--;
              }
              conn.destroy();
              this.forgetIfEmpty(slot);
            }, this.idleMs).unref(),
          };
          slot.idle.push(idle);
        },
        (err: unknown) => {
          slot.dialing--;
          if (!this.closed) this.pooled--;
          slot.backoffUntil = Date.now() + REFILL_BACKOFF_MS;
          this.log.debug({ err: { message: (err as Error).message } }, 'warm upstream dial failed');
        },
      );
    }
  }
}

/** True for a connection that came out of the warm pool (see WarmPool). */
export function isWarm(conn: UpstreamConnection): boolean {
  return (conn as Partial<WarmConnection>).warm === true;
}
