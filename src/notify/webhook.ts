import { createHmac } from 'node:crypto';
import type { Config, NotifyEvent, WebhookConfig } from '../config/schema.js';
import { type Logger, silentLogger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { GrantStore } from '../store/types.js';
import { ANNOUNCED_STATUS, announceChanged, claimAnnouncement, type NoticeStore } from './announce.js';
import { type GrantEvent, grantEvent } from './event.js';
import { render } from './formats.js';

type NotifyConfig = Config['notifications'];
type Result = 'sent' | 'failed' | 'dropped';
type Attempt =
  | { type: 'ok' }
  | { type: 'retry'; why: string; afterMs?: number }
  | { type: 'fatal'; why: string };

/** Longest wait between two attempts, whatever the doubling reaches. */
const MAX_DELAY_MS = 300_000;

/**
 * `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"): the timestamp is signed with the
 * body, so a receiver that refuses old timestamps cannot be fed a recorded request again.
 */
export function signature(secret: string, timestamp: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

interface Job {
  event: GrantEvent;
  queuedAt: number;
}

interface Deps {
  metrics?: Metrics | undefined;
  log: Logger;
  now: () => number;
}

/**
 * One webhook: its own bounded queue and delivery loop, so a receiver that is down delays only
 * its own events. Events go out in order, each retried with jittered doubling delays until
 * max_attempts or max_retry_seconds after it was queued.
 */
export class WebhookSender {
  readonly #queue: Job[] = [];
  readonly #abort = new AbortController();
  #draining: Promise<void> | undefined;
  #closed = false;

  constructor(
    readonly config: WebhookConfig,
    readonly policy: NotifyConfig,
    private readonly deps: Deps,
  ) {}

  /** False (and counted as dropped) when the queue is full or the sender is closed. */
  enqueue(event: GrantEvent): boolean {
    if (this.#closed || this.#queue.length >= this.policy.queue_size) {
      this.#count(event.event, 'dropped');
      this.deps.log.warn(
        { webhook: this.config.name, event: event.event, queued: this.#queue.length },
        'webhook queue full or closed: event dropped',
      );
      return false;
    }
    this.#queue.push({ event, queuedAt: this.deps.now() });
    this.#draining ??= this.#drain().finally(() => {
      this.#draining = undefined;
    });
    return true;
  }

  /** Stops taking events; waits up to `graceMs` for queued ones, then abandons the rest (counted dropped). */
  async close(graceMs = 0): Promise<void> {
    this.#closed = true;
    const draining = this.#draining;
    if (draining && graceMs > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([draining, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
    }
    this.#abort.abort();
    await this.#draining;
  }

  async #drain(): Promise<void> {
    for (let job = this.#queue.shift(); job; job = this.#queue.shift()) {
      const result = this.#abort.signal.aborted ? 'dropped' : await this.#deliver(job);
      this.#count(job.event.event, result);
    }
  }

  async #deliver(job: Job): Promise<Result> {
    const { max_attempts, retry_initial_seconds, max_retry_seconds } = this.policy;
    const log = this.deps.log;
    const fields = { webhook: this.config.name, event: job.event.event, id: job.event.id };
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.#attempt(job.event);
      if (this.#abort.signal.aborted) return 'dropped';
      if (outcome.type === 'ok') {
        log.info({ ...fields, attempt }, 'webhook delivered');
        return 'sent';
      }
      if (outcome.type === 'fatal') {
        log.error({ ...fields, attempt, why: outcome.why }, 'webhook refused the event: not retried');
        return 'failed';
      }
      const backoff = Math.min(retry_initial_seconds * 1000 * 2 ** (attempt - 1), MAX_DELAY_MS);
      const delay = Math.max(backoff * (0.5 + Math.random() * 0.5), outcome.afterMs ?? 0);
      if (attempt >= max_attempts || this.deps.now() + delay - job.queuedAt > max_retry_seconds * 1000) {
        log.error({ ...fields, attempt, why: outcome.why }, 'webhook delivery given up');
        return 'failed';
      }
      log.warn(
        { ...fields, attempt, why: outcome.why, retryInMs: Math.round(delay) },
        'webhook delivery failed; retrying',
      );
      if (!(await this.#sleep(delay))) return 'dropped';
    }
  }

  async #attempt(e: GrantEvent): Promise<Attempt> {
    const { body, headers } = render(this.config.format, e);
    const all: Record<string, string> = {
      ...this.config.headers,
      ...headers,
      'user-agent': 'imap-oauth-proxy',
      'x-webhook-id': e.id,
      'x-webhook-event': e.event,
    };
    if (this.config.secret) {
      const ts = String(Math.floor(this.deps.now() / 1000));
      all['x-signature-timestamp'] = ts;
      all['x-signature'] = signature(this.config.secret, ts, body);
    }
    try {
      const res = await fetch(this.config.url, {
        method: 'POST',
        body,
        headers: all,
        // A redirect could carry the signed body elsewhere: treated as a refusal.
        redirect: 'manual',
        signal: AbortSignal.any([
          this.#abort.signal,
          AbortSignal.timeout(this.policy.timeout_seconds * 1000),
        ]),
      });
      await res.body?.cancel().catch(() => undefined);
      if (res.status >= 200 && res.status < 300) return { type: 'ok' };
      const why = `http_${res.status}`;
      if (res.status === 408 || res.status === 429 || res.status >= 500) {
        const after = retryAfterMs(res.headers.get('retry-after'));
        return after === undefined ? { type: 'retry', why } : { type: 'retry', why, afterMs: after };
      }
      return { type: 'fatal', why };
    } catch (err) {
      // The error's code only: undici's messages are safe, but a URL could one day hold a token.
      return { type: 'retry', why: errorCode(err) };
    }
  }

  #sleep(ms: number): Promise<boolean> {
    const signal = this.#abort.signal;
    return new Promise((resolve) => {
      if (signal.aborted) return resolve(false);
      const onAbort = () => {
        clearTimeout(timer);
        resolve(false);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve(true);
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  #count(kind: NotifyEvent, result: Result): void {
    this.deps.metrics?.notifications.inc({ kind, result });
  }
}

function retryAfterMs(v: string | null): number | undefined {
  if (!v) return undefined;
  const s = Number(v);
  if (Number.isFinite(s) && s >= 0) return s * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

function errorCode(err: unknown): string {
  if (!(err instanceof Error)) return 'error';
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'timeout';
  const code = (err.cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : err.name;
}

export interface NotifierOptions {
  /**
   * Where accounts are read; with the announced-status methods (every real store) a change is
   * announced once across all processes sharing the store, and changes this process did not
   * make (CLI, other instances) are found by a watch every `watchMs`.
   */
  store: Pick<GrantStore, 'getAccount'> & Partial<NoticeStore>;
  config: NotifyConfig;
  /** admin.public_url, for the reconnect link. */
  publicUrl?: string | undefined;
  metrics?: Metrics | undefined;
  log?: Logger;
  now?: () => number;
  /** How often the store is looked at for status changes made elsewhere (default 30 s). */
  watchMs?: number;
}

export const WATCH_MS = 30_000;

/**
 * Grant changes → every webhook that wants them. `grantChanged` returns at once: the change is
 * claimed, the account read and the event queued in the background, so a login never waits
 * for a receiver.
 */
export class Notifier {
  readonly #o: NotifierOptions;
  readonly #deps: Deps;
  readonly #pending = new Set<Promise<void>>();
  readonly #notices: NoticeStore | undefined;
  #senders: WebhookSender[] = [];
  #publicUrl: string | undefined;
  #watchTimer: NodeJS.Timeout | undefined;
  #watching: Promise<void> | undefined;
  #closed = false;

  constructor(opts: NotifierOptions) {
    this.#o = opts;
    this.#deps = {
      metrics: opts.metrics,
      log: (opts.log ?? silentLogger).child({ component: 'notify' }),
      now: opts.now ?? Date.now,
    };
    const { grantNotice, claimGrantNotice, unannouncedGrants } = opts.store;
    if (grantNotice && claimGrantNotice && unannouncedGrants) {
      const store = opts.store as NoticeStore;
      this.#notices = {
        grantNotice: grantNotice.bind(store),
        claimGrantNotice: claimGrantNotice.bind(store),
        unannouncedGrants: unannouncedGrants.bind(store),
      };
    }
    this.configure(opts.config, opts.publicUrl);
  }

  /** Applies new settings; webhooks whose settings changed finish their queued events in the background. */
  configure(config: NotifyConfig, publicUrl: string | undefined): void {
    this.#publicUrl = publicUrl;
    const same = (a: WebhookSender, w: WebhookConfig) =>
      JSON.stringify(a.config) === JSON.stringify(w) && JSON.stringify(a.policy) === JSON.stringify(config);
    const next = config.webhooks.map(
      (w) => this.#senders.find((s) => same(s, w)) ?? new WebhookSender(w, config, this.#deps),
    );
    for (const old of this.#senders) {
      if (!next.includes(old)) void old.close(config.max_retry_seconds * 1000);
    }
    this.#senders = next;
    // Watch only while there is someone to tell: the first look records every grant's status.
    if (next.length > 0) this.#startWatch();
    else this.#stopWatch();
  }

  /** A grant writer of this process saw `event` happen (committed). */
  grantChanged(accountId: number, event: NotifyEvent, reason: string | null | undefined): void {
    if (!this.#senders.some((s) => s.config.events.includes(event))) return;
    const notices = this.#notices;
    this.#track(
      (notices ? claimAnnouncement(notices, accountId, ANNOUNCED_STATUS[event]) : Promise.resolve(true)).then(
        (mine) => (mine ? this.#send(accountId, event, reason) : undefined),
      ),
      accountId,
      event,
    );
  }

  /** Looks at the store once for status changes not yet announced (by anyone); resolves when queued. */
  async watchOnce(): Promise<void> {
    const notices = this.#notices;
    if (!notices || this.#closed) return;
    await announceChanged(notices, (id, event, reason) =>
      this.#track(this.#send(id, event, reason), id, event),
    );
  }

  async #send(accountId: number, event: NotifyEvent, reason: string | null | undefined): Promise<void> {
    const wanted = this.#senders.filter((s) => s.config.events.includes(event));
    if (wanted.length === 0) return;
    const account = await this.#o.store.getAccount(accountId);
    if (!account) return;
    const e = grantEvent(event, account, reason, this.#publicUrl, this.#deps.now());
    for (const s of wanted) s.enqueue(e);
  }

  #track(p: Promise<void>, accountId: number, event: NotifyEvent): void {
    const tracked = p
      .catch((err: unknown) => {
        this.#deps.log.error({ err, accountId, event }, 'grant event not sent: store unreadable');
      })
      .finally(() => this.#pending.delete(tracked));
    this.#pending.add(tracked);
  }

  #startWatch(): void {
    if (!this.#notices || this.#watchTimer || this.#closed) return;
    const tick = () => {
      // One look at a time: a slow store is not asked again while it answers.
      this.#watching ??= this.watchOnce()
        .catch((err: unknown) => {
          this.#deps.log.warn({ err }, 'grant status watch failed; trying again at the next interval');
        })
        .finally(() => {
          this.#watching = undefined;
        });
    };
    this.#watchTimer = setInterval(tick, this.#o.watchMs ?? WATCH_MS);
    this.#watchTimer.unref();
    tick();
  }

  #stopWatch(): void {
    clearInterval(this.#watchTimer);
    this.#watchTimer = undefined;
  }

  /** Waits up to `graceMs` for queued events to go out, then stops (what is left is counted dropped). */
  async close(graceMs = 0): Promise<void> {
    this.#closed = true;
    this.#stopWatch();
    await this.#watching;
    await Promise.allSettled([...this.#pending]);
    await Promise.all(this.#senders.map((s) => s.close(graceMs)));
  }
}
