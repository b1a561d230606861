import { LRUCache } from 'lru-cache';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics.js';
import { normalizeLogin } from '../store/login.js';

/**
 * Brute-force limiter. Three bounded counters of failures within `window_seconds`:
 *
 *  - (login, address): `free_failures` free, then delays doubling from 250 ms up to
 *    `max_delay_ms`, then `[LIMIT]` after `max_failures`. This is what slows and stops an
 *    attacker guessing one user's password from one address — without touching the same
 *    user on any other address, so the attacker cannot lock the real user out.
 *  - address (all logins): the same curve at ADDRESS_FACTOR× the thresholds, against password
 *    spraying (many logins, one address). Generous because offices share NAT addresses.
 *  - login (all addresses): at USER_FACTOR× `max_failures` a distributed attack is assumed;
 *    from then on only addresses that have themselves failed for this login are refused, and
 *    a clean address (the real user) still gets through. With 118-bit app passwords each
 *    fresh address gets one guess, which is harmless.
 *
 * A success clears that (login, address) record only; the address-wide count stays so a
 * sprayer holding one valid account cannot reset it.
 */

export const ADDRESS_FACTOR = 3;
export const USER_FACTOR = 10;
const BASE_DELAY_MS = 250;

export type LimiterScope = 'user' | 'address';
export type LimiterDecision =
  | { action: 'allow'; delayMs: 0 }
  | { action: 'delay'; delayMs: number; scope: LimiterScope }
  | { action: 'refuse'; scope: LimiterScope };

interface Entry {
  failures: number;
  firstAt: number;
}

export interface LimiterOptions {
  metrics?: Pick<Metrics, 'limiter'>;
  now?: () => number;
}

export class LoginLimiter {
  readonly #cfg: Config['limiter'];
  readonly #now: () => number;
  readonly #metrics: Pick<Metrics, 'limiter'> | undefined;
  readonly #pair: LRUCache<string, Entry>;
  readonly #address: LRUCache<string, Entry>;
  readonly #user: LRUCache<string, Entry>;

  constructor(cfg: Config['limiter'], opts: LimiterOptions = {}) {
    this.#cfg = cfg;
    this.#now = opts.now ?? Date.now;
    this.#metrics = opts.metrics;
    const make = () =>
      new LRUCache<string, Entry>({
        max: cfg.max_entries,
        ttl: cfg.window_seconds * 1000,
        ttlAutopurge: false,
        perf: { now: () => this.#now() },
      });
    this.#pair = make();
    this.#address = make();
    this.#user = make();
  }

  #count(cache: LRUCache<string, Entry>, key: string): number {
    const e = cache.get(key);
    if (!e) return 0;
    if (this.#now() - e.firstAt > this.#cfg.window_seconds * 1000) {
      cache.delete(key);
      return 0;
    }
    return e.failures;
  }

  #delayFor(failures: number, free: number): number {
    if (failures <= free) return 0;
    return Math.min(this.#cfg.max_delay_ms, BASE_DELAY_MS * 2 ** Math.min(failures - free - 1, 20));
  }

  /** Decide before checking the password; a refusal must answer without checking it. */
  check(login: string, address: string): LimiterDecision {
    const user = normalizeLogin(login);
    const { free_failures: free, max_failures: max } = this.#cfg;
    const pair = this.#count(this.#pair, `${user}\0${address}`);
    const addr = this.#count(this.#address, address);
    const global = this.#count(this.#user, user);
    let d: LimiterDecision = { action: 'allow', delayMs: 0 };
    if (pair >= max || (global >= max * USER_FACTOR && pair > 0)) d = { action: 'refuse', scope: 'user' };
    else if (addr >= max * ADDRESS_FACTOR) d = { action: 'refuse', scope: 'address' };
    else {
      const byPair = this.#delayFor(pair, free);
      const byAddr = this.#delayFor(addr, free * ADDRESS_FACTOR);
      if (byPair > 0 || byAddr > 0) {
        d =
          byPair >= byAddr
            ? { action: 'delay', delayMs: byPair, scope: 'user' }
            : { action: 'delay', delayMs: byAddr, scope: 'address' };
      }
    }
    if (d.action !== 'allow') {
      this.#metrics?.limiter.inc({ scope: d.scope, action: d.action === 'delay' ? 'delayed' : 'refused' });
    }
    return d;
  }

  /**
   * The address has failed so often that every login from it is refused: its connections can
   * be closed at accept, before a TLS handshake or a password check costs anything.
   */
  addressLocked(address: string): boolean {
    return this.#count(this.#address, address) >= this.#cfg.max_failures * ADDRESS_FACTOR;
  }

  #bump(cache: LRUCache<string, Entry>, key: string): void {
    const n = this.#count(cache, key);
    const prev = cache.get(key);
    cache.set(key, { failures: n + 1, firstAt: n === 0 || !prev ? this.#now() : prev.firstAt });
  }

  recordFailure(login: string, address: string): void {
    const user = normalizeLogin(login);
    this.#bump(this.#pair, `${user}\0${address}`);
    this.#bump(this.#address, address);
    this.#bump(this.#user, user);
  }

  recordSuccess(login: string, address: string): void {
    this.#pair.delete(`${normalizeLogin(login)}\0${address}`);
  }
}
