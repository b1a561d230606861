import type { Config } from '../config/schema.js';
import { isProxyError, messageOf } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { AccountRecord, GrantRecord, GrantStore } from '../store/types.js';
import type { TokenBroker } from './types.js';

const DAY_MS = 86_400_000;
/** The first scan waits a random time up to this (or the scan interval): a restart causes no burst. */
const FIRST_SCAN_MAX_MS = 300_000;

export interface KeepaliveSettings {
  /** A grant whose last refresh is older than this is refreshed. */
  idleMs: number;
  /** Most refreshes per minute; consecutive ones are at least 60 s / perMinute apart. */
  perMinute: number;
  scanIntervalMs: number;
}

export function keepaliveSettings(c: Config['keepalive']): KeepaliveSettings | null {
  if (!c.enabled) return null;
  return { idleMs: c.idle_days * DAY_MS, perMinute: c.per_minute, scanIntervalMs: c.scan_minutes * 60_000 };
}

export interface KeepaliveOptions {
  store: Pick<GrantStore, 'listAccounts' | 'getAccount' | 'getGrant'>;
  broker: Pick<TokenBroker, 'getAccessToken'>;
  settings: KeepaliveSettings;
  metrics?: Metrics | undefined;
  log?: Logger;
  now?: () => number;
  random?: () => number;
  /** Delay before the first scan (default: random, at most the scan interval and 5 minutes). */
  firstScanMs?: number;
}

export type KeepaliveResult = 'refreshed' | 'needs_consent' | 'failed';

/** Idle means: a refresh-token grant, active, last refreshed (or stored) longer ago than `idleMs`. */
export function isIdle(g: GrantRecord | null, now: number, idleMs: number): boolean {
  if (g?.kind !== 'refresh_token' || g.status !== 'active' || !g.refreshToken) return false;
  return (g.lastRefreshAt ?? g.updatedAt) < now - idleMs;
}

/**
 * Refreshes grants nobody has used for a while, so the provider does not let them lapse
 * (Microsoft ends a refresh token after 90 days unused). A scan queues the idle grants, oldest
 * first, at most what one scan interval can refresh; they go out one at a time, spaced by
 * 60 s / per_minute plus up to half that again of jitter. Each is read again just before its
 * refresh: an account disabled or a grant refreshed by a login meanwhile is skipped. A failed
 * refresh is logged and counted; the broker alone decides whether a grant needs consent.
 */
export class GrantKeepalive {
  readonly #o: KeepaliveOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #random: () => number;
  #queue: number[] = [];
  #timer: NodeJS.Timeout | undefined;
  #scanTimer: NodeJS.Timeout | undefined;
  #working: Promise<void> | undefined;
  #stopped = false;

  constructor(opts: KeepaliveOptions) {
    this.#o = opts;
    this.#log = (opts.log ?? silentLogger).child({ component: 'keepalive' });
    this.#now = opts.now ?? Date.now;
    this.#random = opts.random ?? Math.random;
  }

  get spacingMs(): number {
    return 60_000 / this.#o.settings.perMinute;
  }

  start(): this {
    const first =
      this.#o.firstScanMs ?? this.#random() * Math.min(this.#o.settings.scanIntervalMs, FIRST_SCAN_MAX_MS);
    this.#scheduleScan(first);
    return this;
  }

  /** Stops scanning and refreshing; resolves once a refresh under way has finished. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#scanTimer);
    this.#queue = [];
    await this.#working;
  }

  /** Reads the store and queues idle grants not queued yet; returns how many were added. */
  async scan(): Promise<number> {
    const now = this.#now();
    const { idleMs, scanIntervalMs } = this.#o.settings;
    const room = Math.max(1, Math.floor(scanIntervalMs / this.spacingMs)) - this.#queue.length;
    if (room <= 0) return 0;
    const idle: { id: number; at: number }[] = [];
    for (const a of await this.#o.store.listAccounts()) {
      if (a.status !== 'active' || this.#queue.includes(a.id)) continue;
      const g = await this.#o.store.getGrant(a.id);
      if (g && isIdle(g, now, idleMs)) idle.push({ id: a.id, at: g.lastRefreshAt ?? g.updatedAt });
    }
    const picked = idle.sort((x, y) => x.at - y.at).slice(0, room);
    this.#queue.push(...picked.map((p) => p.id));
    if (picked.length > 0) {
      this.#log.info(
        { queued: picked.length, idle: idle.length },
        'idle grants queued for a keepalive refresh',
      );
    }
    if (this.#timer === undefined && this.#queue.length > 0) this.#scheduleNext();
    return picked.length;
  }

  #scheduleScan(ms: number): void {
    if (this.#stopped) return;
    this.#scanTimer = setTimeout(() => {
      this.scan()
        .catch((err: unknown) =>
          this.#log.warn({ err: messageOf(err) }, 'keepalive scan failed; trying again later'),
        )
        .finally(() => this.#scheduleScan(this.#o.settings.scanIntervalMs * (0.9 + 0.2 * this.#random())));
    }, ms);
    this.#scanTimer.unref();
  }

  #scheduleNext(): void {
    if (this.#stopped) return;
    // Jitter only lengthens the gap, so the per-minute bound holds.
    this.#timer = setTimeout(
      () => {
        const id = this.#queue.shift();
        if (id === undefined) {
          this.#timer = undefined;
          return;
        }
        this.#working = this.#refresh(id).finally(() => {
          this.#working = undefined;
          if (this.#queue.length > 0) this.#scheduleNext();
          else this.#timer = undefined;
        });
      },
      this.spacingMs * (1 + 0.5 * this.#random()),
    );
    this.#timer.unref();
  }

  async #refresh(accountId: number): Promise<void> {
    let account: AccountRecord | null = null;
    try {
      account = await this.#o.store.getAccount(accountId);
      if (account?.status !== 'active') return;
      if (!isIdle(await this.#o.store.getGrant(accountId), this.#now(), this.#o.settings.idleMs)) return;
      await this.#o.broker.getAccessToken(account, { forceRefresh: true });
      this.#count(account, 'refreshed');
      this.#log.info({ accountId, provider: account.provider }, 'idle grant refreshed');
    } catch (err) {
      if (!account) {
        this.#log.warn({ accountId, err: messageOf(err) }, 'keepalive: account unreadable');
        return;
      }
      const result: KeepaliveResult =
        isProxyError(err) && err.reason === 'needs_consent' ? 'needs_consent' : 'failed';
      this.#count(account, result);
      this.#log.warn(
        { accountId, provider: account.provider, result, err: messageOf(err) },
        'keepalive refresh failed',
      );
    }
  }

  #count(account: AccountRecord, result: KeepaliveResult): void {
    this.#o.metrics?.grantKeepalive.inc({ provider: account.provider, result });
  }
}
