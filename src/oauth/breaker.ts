import type { Metrics } from '../metrics.js';

export type BreakerState = 'closed' | 'open' | 'half_open';

/** Gauge values of `provider_breaker_state`. */
export const BREAKER_STATE_VALUE: Record<BreakerState, number> = { closed: 0, half_open: 1, open: 2 };

export interface BreakerOptions {
  /** Consecutive availability failures that open the breaker. */
  readonly failures?: number;
  /** First open period; doubles after each failed probe up to `maxOpenMs`. */
  readonly openMs?: number;
  readonly maxOpenMs?: number;
  readonly metrics?: Pick<Metrics, 'breakerState' | 'breakerTransitions'>;
  readonly now?: () => number;
  /** Called when a breaker closes after being open (the broker forgets per-grant back-offs then). */
  readonly onClose?: (provider: string) => void;
}

interface Circuit {
  state: BreakerState;
  consecutive: number;
  openUntil: number;
  /** Open periods in a row (the next one doubles). */
  opens: number;
  /** A half-open probe is out: everyone else still fails fast. */
  probing: boolean;
}

/**
 * One circuit breaker per OAuth provider's token endpoint. Closed: requests go out. After
 * `failures` availability failures in a row (timeouts, 5xx, 429, network errors — not
 * `invalid_grant`, which proves the endpoint works) or a Retry-After, it opens: refreshes fail
 * at once instead of each waiting for a dead or frozen server. When the open period ends, one
 * request goes out as a probe; its success closes the breaker at once, its failure opens it
 * again for twice as long. Cached access tokens are never affected: only refreshes ask here.
 */
export class ProviderBreaker {
  readonly #circuits = new Map<string, Circuit>();
  readonly #failures: number;
  readonly #openMs: number;
  readonly #maxOpenMs: number;
  readonly #metrics: BreakerOptions['metrics'];
  readonly #now: () => number;
  readonly #onClose: ((provider: string) => void) | undefined;

  constructor(opts: BreakerOptions = {}) {
    this.#onClose = opts.onClose;
    this.#failures = opts.failures ?? 3;
    this.#openMs = opts.openMs ?? 2000;
    this.#maxOpenMs = opts.maxOpenMs ?? 30_000;
    this.#metrics = opts.metrics;
    this.#now = opts.now ?? Date.now;
  }

  state(provider: string): BreakerState {
    return this.#circuits.get(provider)?.state ?? 'closed';
  }

  /**
   * May a token request to `provider` go out now? `go` (closed), `probe` (the one half-open
   * try: report its outcome), or `blocked` with the time the next probe may go.
   */
  acquire(provider: string): { kind: 'go' } | { kind: 'probe' } | { kind: 'blocked'; until: number } {
    const c = this.#circuit(provider);
    if (c.state === 'closed') return { kind: 'go' };
    const now = this.#now();
    if (c.state === 'open' && now >= c.openUntil) this.#set(provider, c, 'half_open');
    if (c.state === 'half_open' && !c.probing) {
      c.probing = true;
      return { kind: 'probe' };
    }
    return { kind: 'blocked', until: Math.max(c.openUntil, now) };
  }

  /** The endpoint answered (a token, or a refusal that is about the grant). */
  succeed(provider: string): void {
    const c = this.#circuit(provider);
    c.consecutive = 0;
    c.probing = false;
    c.opens = 0;
    if (c.state !== 'closed') {
      this.#set(provider, c, 'closed');
      this.#onClose?.(provider);
    }
  }

  /** The endpoint could not answer: timeout, 5xx, 429, network error, garbage. */
  fail(provider: string, retryAfterMs?: number): void {
    const c = this.#circuit(provider);
    const wasProbe = c.state === 'half_open';
    c.probing = false;
    c.consecutive++;
    if (!wasProbe && c.state === 'closed' && c.consecutive < this.#failures && retryAfterMs === undefined)
      return;
    if (c.state === 'open' && !wasProbe) {
      // Requests that left before it opened: a Retry-After may only lengthen the wait.
      if (retryAfterMs !== undefined) c.openUntil = Math.max(c.openUntil, this.#now() + retryAfterMs);
      return;
    }
    const period = Math.min(this.#maxOpenMs, this.#openMs * 2 ** c.opens);
    c.opens++;
    c.openUntil = this.#now() + Math.max(period, retryAfterMs ?? 0);
    this.#set(provider, c, 'open');
  }

  /** A probe that never reported (e.g. aborted): let the next request probe instead. */
  release(provider: string): void {
    const c = this.#circuits.get(provider);
    if (c) c.probing = false;
  }

  #circuit(provider: string): Circuit {
    let c = this.#circuits.get(provider);
    if (!c) {
      c = { state: 'closed', consecutive: 0, openUntil: 0, opens: 0, probing: false };
      this.#circuits.set(provider, c);
      this.#metrics?.breakerState.set({ provider }, BREAKER_STATE_VALUE.closed);
    }
    return c;
  }

  #set(provider: string, c: Circuit, to: BreakerState): void {
    c.state = to;
    this.#metrics?.breakerState.set({ provider }, BREAKER_STATE_VALUE[to]);
    this.#metrics?.breakerTransitions.inc({ provider, to });
  }
}
