import { LRUCache } from 'lru-cache';

interface Entry {
  failures: number;
  until: number;
}

/**
 * Per-key exponential backoff after token-endpoint failures, so a dead or throttling OP is
 * not hammered: initialMs doubling to maxMs, never shorter than the server's Retry-After.
 */
export class Backoff {
  readonly #entries: LRUCache<string, Entry>;
  readonly #initialMs: number;
  readonly #maxMs: number;

  constructor(opts: { initialMs?: number; maxMs?: number; maxEntries?: number } = {}) {
    this.#initialMs = opts.initialMs ?? 1000;
    this.#maxMs = opts.maxMs ?? 300_000;
    this.#entries = new LRUCache({ max: opts.maxEntries ?? 100_000 });
  }

  /** Epoch ms until which `key` should not be retried (0 when free). */
  blockedUntil(key: string, now: number): number {
    const e = this.#entries.get(key);
    return e && e.until > now ? e.until : 0;
  }

  /** Records a failure; returns the time the next attempt is allowed. */
  fail(key: string, now: number, retryAfterMs?: number): number {
    const failures = (this.#entries.get(key)?.failures ?? 0) + 1;
    const wait = Math.min(this.#maxMs, this.#initialMs * 2 ** (failures - 1));
    const until = now + Math.max(wait, retryAfterMs ?? 0);
    this.#entries.set(key, { failures, until });
    return until;
  }

  succeed(key: string): void {
    this.#entries.delete(key);
  }

  /** The provider answers again: every grant may try at once. */
  clear(): void {
    this.#entries.clear();
  }
}
