import {
  type AuthenticatedUpstream,
  targetKey,
  type UpstreamConnection,
  type UpstreamConnector,
  type UpstreamTarget,
} from '../core/upstream.js';
import { isConnectionFailure, isProxyError, messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import { DIAL_LIMITS } from './limits.js';

/** After a failed background dial, no refill for this long (a down upstream is not hammered). */
const REFILL_BACKOFF_MS = 5000;

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

/**
 * A connection the pool handed out for one login. A pre-dialled one the server closed while it
 * waited is replaced by one fresh dial inside `authenticate` (same token), so callers never see
 * the pool. `recycle` puts a connection its login never used back into the pool.
 */
class PooledConnection implements UpstreamConnection {
  private retried: boolean;
  private refilled = false;
  constructor(
    private current: UpstreamConnection,
    private readonly pool: WarmPool,
    private readonly slot: Slot,
    private readonly dialFresh: () => Promise<UpstreamConnection>,
    warm: boolean,
    /** Dials replacements; run once this login's exchange is over, so their TLS handshakes do not slow it. */
    private readonly refill: () => void,
  ) {
    this.retried = !warm;
  }

  private refillOnce(): void {
    if (this.refilled) return;
    this.refilled = true;
    this.refill();
  }
  get capabilities(): readonly string[] {
    return this.current.capabilities;
  }
  get reusable(): boolean {
    return this.current.reusable;
  }
  async authenticate(user: string, accessToken: string): Promise<AuthenticatedUpstream> {
    try {
      return await this.current.authenticate(user, accessToken);
    } catch (err) {
      // An upstream that stopped answering: the other connections waiting for it are no better.
      if (isProxyError(err) && err.reason === 'timeout') this.pool.purge(this.slot);
      if (this.retried || !isConnectionFailure(err)) throw err;
      this.retried = true;
      this.current.destroy();
      this.current = await this.dialFresh();
      return await this.current.authenticate(user, accessToken);
    } finally {
      this.refillOnce();
    }
  }
  destroy(): void {
    this.current.destroy();
    this.refillOnce();
  }
  recycle(): void {
    this.pool.giveBack(this.slot, this.current);
    this.refillOnce();
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
  private size: number;
  private idleMs: number;
  private readonly maxTotal: number;
  /** Idle plus dialling, over all targets. */
  private pooled = 0;
  /** Logins served from a pre-dialled connection (for tests and debugging). */
  warmHits = 0;
  private closed = false;

  constructor(
    private readonly inner: UpstreamConnector,
    opts: WarmPoolOptions = {},
  ) {
    this.log = opts.log ?? silentLogger;
    this.size = opts.size ?? DIAL_LIMITS.warmConnections;
    this.idleMs = opts.idleMs ?? DIAL_LIMITS.warmIdleMs;
    this.maxTotal = opts.maxTotal ?? DIAL_LIMITS.warmConnectionsTotal;
  }

  async connect(
    target: UpstreamTarget,
    labels: { provider: string },
    signal?: AbortSignal,
  ): Promise<UpstreamConnection> {
    // An upstream run inside this process (Graph delivery) has nothing to dial ahead.
    if (this.closed || this.size === 0 || target.graph) return this.inner.connect(target, labels, signal);
    const key = targetKey(target);
    let slot = this.slots.get(key);
    if (!slot) {
      slot = { key, idle: [], dialing: 0, backoffUntil: 0 };
      this.slots.set(key, slot);
    }
    const fresh = () => this.inner.connect(target, labels, signal);
    const refill = () => this.refill(slot, target, labels);
    const warm = this.take(slot);
    if (warm) {
      this.warmHits++;
      return new PooledConnection(warm, this, slot, fresh, true, refill);
    }
    // Warm up only behind a dial that worked: a down upstream sees no extra background dials.
    const conn = await fresh();
    return new PooledConnection(conn, this, slot, fresh, false, refill);
  }

  /** An unused connection back into its slot, if it is still good and there is room. */
  giveBack(slot: Slot, conn: UpstreamConnection): void {
    if (this.closed || !conn.reusable || slot.idle.length >= this.size || this.pooled >= this.maxTotal) {
      conn.destroy();
      return;
    }
    if (this.slots.get(slot.key) !== slot) this.slots.set(slot.key, slot);
    this.park(slot, conn);
  }

  /**
   * Drops every idle connection to a target that just timed out (it froze: they would too) and
   * dials no replacement for a while; logins meanwhile dial fresh and meet the connect timeout.
   */
  purge(slot: Slot): void {
    for (const i of slot.idle.splice(0)) {
      this.pooled--;
      this.drop(i);
    }
    // The slot stays (empty) so its back-off holds; slots are bounded by the upstream targets.
    slot.backoffUntil = Date.now() + REFILL_BACKOFF_MS;
    this.log.warn('upstream timed out: its pre-dialled connections are dropped');
  }

  /** Idle connections per target key (for tests and debugging). */
  idleCount(target: UpstreamTarget): number {
    return this.slots.get(targetKey(target))?.idle.length ?? 0;
  }

  /** New bounds from a reload: connections beyond the new size are closed now, later ones idle out by the new time. */
  configure(opts: { size: number; idleMs: number }): void {
    this.size = opts.size;
    this.idleMs = opts.idleMs;
    for (const slot of this.slots.values()) {
      while (slot.idle.length > this.size) {
        const i = slot.idle.shift();
        if (!i) break;
        this.pooled--;
        this.drop(i);
      }
      this.forgetIfEmpty(slot);
    }
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
      if (i.conn.reusable) return i.conn;
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

  /** Keeps a ready connection idle in its slot until a login takes it or it idles out. */
  private park(slot: Slot, conn: UpstreamConnection): void {
    this.pooled++;
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
          this.pooled--;
          this.park(slot, conn);
        },
        (err: unknown) => {
          slot.dialing--;
          if (!this.closed) this.pooled--;
          slot.backoffUntil = Date.now() + REFILL_BACKOFF_MS;
          this.log.debug({ err: { message: messageOf(err) } }, 'warm upstream dial failed');
        },
      );
    }
  }
}
