import type { IncomingMessage, ServerResponse } from 'node:http';
import { LRUCache } from 'lru-cache';
import type { Config } from '../config/schema.js';
import type { Metrics } from '../metrics.js';

/**
 * Guessing protection for the admin HTTP server's secrets (/status password, /metrics token):
 * failed attempts are counted per client address in a bounded LRU; after `maxFailures` within
 * `windowSeconds` (counted from the first failure) the address gets 429 with Retry-After and
 * its credentials are not even checked until the window ends. Requests without credentials
 * (a browser's first request before it prompts) do not count; a success clears the address.
 */

export interface AuthLimiterOptions {
  maxFailures: number;
  windowSeconds: number;
  maxEntries: number;
  metrics?: Pick<Metrics, 'limiter'> | undefined;
  now?: () => number;
}

interface Entry {
  failures: number;
  firstAt: number;
}

export class AdminAuthLimiter {
  readonly #opts: AuthLimiterOptions;
  readonly #now: () => number;
  readonly #entries: LRUCache<string, Entry>;

  constructor(opts: AuthLimiterOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#entries = new LRUCache<string, Entry>({ max: opts.maxEntries });
  }

  /** The IMAP limiter's thresholds, applied per address to admin HTTP credentials. */
  static fromConfig(cfg: Config['limiter'], metrics?: Pick<Metrics, 'limiter'>): AdminAuthLimiter {
    return new AdminAuthLimiter({
      maxFailures: cfg.max_failures,
      windowSeconds: cfg.window_seconds,
      maxEntries: Math.min(cfg.max_entries, 10_000),
      metrics,
    });
  }

  #live(address: string): Entry | undefined {
    const e = this.#entries.get(address);
    if (e && this.#now() - e.firstAt >= this.#opts.windowSeconds * 1000) {
      this.#entries.delete(address);
      return undefined;
    }
    return e;
  }

  /** Seconds until `address` may try again; 0 when it may try now. */
  retryAfter(address: string): number {
    const e = this.#live(address);
    if (!e || e.failures < this.#opts.maxFailures) return 0;
    return Math.max(1, Math.ceil((e.firstAt + this.#opts.windowSeconds * 1000 - this.#now()) / 1000));
  }

  recordFailure(address: string): void {
    const e = this.#live(address);
    this.#entries.set(address, { failures: (e?.failures ?? 0) + 1, firstAt: e?.firstAt ?? this.#now() });
  }

  recordSuccess(address: string): void {
    this.#entries.delete(address);
  }

  refused(): void {
    this.#opts.metrics?.limiter.inc({ scope: 'admin', action: 'refused' });
  }
}

export type AuthOutcome = 'ok' | 'denied' | 'limited';

/**
 * Runs `check` unless the client's address is locked out; then it answers 429 itself and
 * `check` is not called. The caller answers 'denied' (401) its own way.
 */
export function limitedAuth(
  limiter: AdminAuthLimiter | undefined,
  req: IncomingMessage,
  res: ServerResponse,
  check: () => boolean,
): AuthOutcome {
  if (!limiter) return check() ? 'ok' : 'denied';
  const address = req.socket.remoteAddress ?? 'unknown';
  const wait = limiter.retryAfter(address);
  if (wait > 0) {
    limiter.refused();
    res.writeHead(429, {
      'retry-after': String(wait),
      'content-type': 'text/plain; charset=utf-8',
      'cache-control': 'no-store',
    });
    res.end('too many failed attempts\n');
    return 'limited';
  }
  if (check()) {
    limiter.recordSuccess(address);
    return 'ok';
  }
  if (req.headers.authorization !== undefined) limiter.recordFailure(address);
  return 'denied';
}
