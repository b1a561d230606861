import type { Duplex } from 'node:stream';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { AddressCounter } from './address-counter.js';

/** The bounds of a Tarpit; a reload may change them. */
export interface TarpitLimits {
  /** How long a refused connection is held before it is closed (0 = off: closed at once). */
  readonly holdMs: number;
  /** Connections held at once from one client address (all listeners of this process). */
  readonly perAddress: number;
  /** Connections held at once over all addresses (all listeners of this process). */
  readonly total: number;
}

export const TARPIT_OFF: TarpitLimits = { holdMs: 0, perAddress: 0, total: 0 };

export function tarpitLimitsFromConfig(cfg: Config['limits']): TarpitLimits {
  return {
    holdMs: Math.round(cfg.tarpit_seconds * 1000),
    perAddress: cfg.tarpit_per_address,
    total: cfg.tarpit_total,
  };
}

/** Why a connection is refused (and held first): the limiter locked its address, or a pre-auth bound is full. */
export type TarpitReason = 'address_locked' | 'too_many_from_address' | 'too_many_unauthenticated';

export interface HoldRequest {
  readonly address: string;
  readonly socket: Duplex;
  readonly protocol: string;
  readonly reason: TarpitReason;
  readonly metrics: Metrics;
  /** Called once when the hold ends by itself (time is up, or the client went away): refuse it now. */
  readonly done: () => void;
}

export interface TarpitHold {
  /** Ends the hold without calling `done` (the caller closes the connection itself, e.g. at shutdown). */
  cancel(): void;
}

/** Bytes a held connection may send (read and dropped, so its close is noticed); then reading stops. */
const DISCARD_BYTES = 4096;

/**
 * Holds refused connections for a while before closing them: not read from, not answered, so a
 * client that reconnects the moment it is closed (a password sprayer whose address the limiter
 * locked, a flood past the pre-auth bounds) reconnects at the tarpit's pace instead of as fast
 * as the proxy can accept and close. Bounded per address and in total; past either bound a
 * connection is closed at once as before. A place frees when the hold ends or the client leaves.
 */
export class Tarpit {
  private readonly places = new AddressCounter();

  private log: Logger | undefined;

  constructor(private limits: TarpitLimits = TARPIT_OFF) {}

  configure(limits: TarpitLimits, log?: Logger): void {
    this.limits = limits;
    if (log) this.log = log;
  }

  /** Connections held now. */
  get held(): number {
    return this.places.size;
  }

  /** Holds the connection, or says no (off, or a bound is full): then the caller refuses it at once. */
  hold(req: HoldRequest): TarpitHold | undefined {
    const { holdMs, perAddress, total } = this.limits;
    if (holdMs <= 0) return undefined;
    const labels = { protocol: req.protocol, reason: req.reason };
    if (this.places.take(req.address, perAddress, total) !== 'ok') {
      req.metrics.tarpitConnections.inc({ ...labels, result: 'full' });
      return undefined;
    }
    // One line when an address starts being held, not one per connection: a flood would pay for its own log.
    if (this.places.of(req.address) === 1)
      this.log?.info({ client: req.address, reason: req.reason }, 'holding connections in the tarpit');
    req.metrics.tarpitConnections.inc({ ...labels, result: 'held' });
    req.metrics.tarpitHeld.inc();

    const s = req.socket;
    let bytes = 0;
    let ended = false;
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      // A client that keeps sending is no longer read: the kernel's flow control holds it back.
      if (bytes > DISCARD_BYTES) s.pause();
    };
    const onGone = () => end(true);
    const timer = setTimeout(() => end(true), holdMs);
    timer.unref();
    const end = (notify: boolean) => {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      s.off('data', onData);
      s.off('end', onGone);
      s.off('close', onGone);
      s.off('error', onGone);
      s.on('error', () => {});
      this.places.release(req.address);
      req.metrics.tarpitHeld.dec();
      if (notify) req.done();
    };
    s.on('data', onData);
    s.on('end', onGone);
    s.on('close', onGone);
    s.on('error', onGone);
    // Read (and drop) what arrives so a client that gives up is noticed and its place freed.
    s.resume();
    return { cancel: () => end(false) };
  }
}
