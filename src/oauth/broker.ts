import { LRUCache } from 'lru-cache';
import type { Config } from '../config/schema.js';
import { messageOf, ProxyError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { AccountRecord, GrantRecord, GrantStore, GrantTx } from '../store/types.js';
import { Backoff } from './backoff.js';
import { type BreakerOptions, ProviderBreaker } from './breaker.js';
import { classifyTokenError, type RefreshFailure } from './classify.js';
import { DEFAULT_GRANT_HANDLERS, type GrantHandler, type TokenSet } from './grants.js';
import type { ProviderRegistry } from './provider.js';
import { refreshAt } from './refresh-window.js';
import type { AccessToken, TokenAudience, TokenBroker, TokenOptions } from './types.js';

export interface BrokerOptions {
  store: GrantStore;
  providers: ProviderRegistry;
  tokens: Config['tokens'];
  /** admin.public_url: where users reconnect a mailbox. */
  publicUrl?: string;
  metrics?: Metrics;
  log?: Logger;
  /** Extra grant kinds (e.g. jwt_bearer); they replace built-ins of the same kind. */
  handlers?: readonly GrantHandler[];
  backoff?: { initialMs?: number; maxMs?: number };
  /** The per-provider circuit breaker's thresholds (tests shorten them). */
  breaker?: Pick<BreakerOptions, 'failures' | 'openMs' | 'maxOpenMs'>;
  /**
   * A token with less validity left than this (default 5 s), or than a quarter of its lifetime
   * when that is shorter, is not handed out.
   */
  minValidityMs?: number;
  /** Clock (epoch ms); tests move it instead of sleeping. */
  now?: () => number;
}

interface Cached {
  token: string;
  expiresAt: number;
  /** Space-separated scopes the token endpoint granted, when it said. */
  scope: string | undefined;
  refreshAt: number;
  /** Validity it must still have to be handed out: the floor, scaled down for short-lived tokens. */
  minValidity: number;
}

interface FetchContext {
  account: AccountRecord;
  handler: GrantHandler;
  force: boolean;
  /** A second resource's token (kept in memory only; the grant's stored token is the main one). */
  audience: TokenAudience | undefined;
}

type LockOutcome =
  | { type: 'ok'; value: Cached; fetched: boolean }
  | { type: 'no_grant' | 'needs_consent' }
  | { type: 'failed'; failure: RefreshFailure; fallback: Cached | undefined };

const ACTOR = 'token-broker';
/** Tokens living under this many floors get a floor of lifetime / this instead. */
const SHORT_LIFETIME_FACTOR = 4;

/**
 * Account → access token. One lru-cache entry per grant (or per provider for app-only
 * tokens); its fetchMethod makes concurrent callers share one refresh, and its TTL ends at
 * the refresh-ahead point so the still-valid token is served while a background refresh runs.
 */
export class OAuthTokenBroker implements TokenBroker {
  readonly #o: BrokerOptions;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly #handlers: Map<string, GrantHandler>;
  readonly #cache: LRUCache<string, Cached, FetchContext>;
  readonly #rejected: LRUCache<string, string>;
  /** Account (and audience) → its cache key, for reportRejected. */
  readonly #keys: LRUCache<string, string>;
  readonly #backoff: Backoff;
  readonly #breaker: ProviderBreaker;
  readonly #inflight = new Set<Promise<unknown>>();
  readonly #minValidity: number;

  constructor(opts: BrokerOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#log = (opts.log ?? silentLogger).child({ component: 'token-broker' });
    this.#handlers = new Map([...DEFAULT_GRANT_HANDLERS, ...(opts.handlers ?? [])].map((h) => [h.kind, h]));
    this.#minValidity = opts.minValidityMs ?? 5000;
    const max = opts.tokens.cache_entries;
    this.#backoff = new Backoff({ ...opts.backoff, maxEntries: max });
    this.#breaker = new ProviderBreaker({
      ...opts.breaker,
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
      now: this.#now,
      onClose: () => this.#backoff.clear(),
    });
    this.#rejected = new LRUCache({ max });
    this.#keys = new LRUCache({ max });
    this.#cache = new LRUCache<string, Cached, FetchContext>({
      max,
      ttl: 60_000,
      perf: { now: this.#now },
      // Read the clock on every check: staleness decides between serving and refreshing.
      ttlResolution: 0,
      fetchMethod: (key, stale, { options, context }) => {
        const p = this.#fetch(key, stale, context).then((v) => {
          // The entry goes stale (triggering a background refresh) at its refresh point.
          options.ttl = Math.max(1, Math.ceil(v.ttlUntil - this.#now()));
          return v.value;
        });
        this.#inflight.add(p);
        void p.finally(() => this.#inflight.delete(p)).catch(() => undefined);
        return p;
      },
    });
  }

  async getAccessToken(account: AccountRecord, opts: TokenOptions = {}): Promise<AccessToken> {
    const grant = await this.#o.store.getGrant(account.id);
    this.#checkGrant(grant);
    const handler = this.#handlers.get((grant as GrantRecord).kind);
    if (!handler) {
      throw new ProxyError('token_unavailable', `no handler for grant kind ${(grant as GrantRecord).kind}`, {
        detail: 'unsupported_grant_kind',
      });
    }
    const audience = opts.audience;
    if (audience && !handler.audiences) {
      throw new ProxyError(
        'token_unavailable',
        `grants of kind ${handler.kind} cannot get tokens for ${audience.key}`,
        { detail: 'audience_unsupported' },
      );
    }
    const base = handler.per === 'provider' ? `p:${account.provider}:${handler.kind}` : `g:${account.id}`;
    const key = audience ? `${base}#${audience.key}` : base;
    this.#keys.set(accountKey(account, audience), key);
    const cur = this.#cache.peek(key, { allowStale: true });
    const force = opts.forceRefresh === true || (cur !== undefined && cur.token === this.#rejected.get(key));
    const usable = !force && cur !== undefined && this.#valid(cur);
    const value = await this.#cache.fetch(key, {
      allowStale: usable,
      forceRefresh: force,
      context: { account, handler, force, audience },
    });
    if (!value || !this.#valid(value)) {
      throw new ProxyError('token_unavailable', 'no valid access token', { detail: 'no_token' });
    }
    return { token: value.token, expiresAt: value.expiresAt, scope: value.scope };
  }

  reportRejected(account: AccountRecord, token: string, audience?: TokenAudience): void {
    const key = this.#keys.get(accountKey(account, audience));
    if (key) this.#rejected.set(key, token);
  }

  /** Resolves when no refresh is running (tests, graceful shutdown). */
  async idle(): Promise<void> {
    while (this.#inflight.size > 0) await Promise.allSettled([...this.#inflight]);
  }

  #checkGrant(grant: GrantRecord | null): void {
    if (!grant) throw new ProxyError('no_grant', 'account has no grant');
    if (grant.status === 'needs_consent') throw this.#needsConsent('grant needs consent');
  }

  #needsConsent(message: string): ProxyError {
    const url = this.#o.publicUrl;
    const clientText = url
      ? `Reconnect the mailbox at ${url.replace(/\/+$/, '')}/connect`
      : 'Ask your administrator to reconnect the mailbox';
    return new ProxyError('needs_consent', message, { clientText, detail: 'invalid_grant' });
  }

  /** The grant works for mail but was never allowed this resource: say how to allow it. */
  #scopeMissing(audience: TokenAudience | undefined): ProxyError {
    const url = this.#o.publicUrl;
    const what = audience?.scope ?? audience?.key ?? 'this';
    const clientText = url
      ? `Reconnect the mailbox at ${url.replace(/\/+$/, '')}/connect to allow ${what}`
      : `Ask your administrator to reconnect the mailbox to allow ${what}`;
    return new ProxyError('scope_missing', `the grant is not allowed ${what}`, {
      detail: 'scope_missing',
      clientText,
    });
  }

  #valid(c: Cached): boolean {
    return c.expiresAt - c.minValidity > this.#now();
  }

  /** Still valid, not the token upstream rejected, and not the one a forced refresh replaces. */
  #servable(c: Cached | undefined, key: string, ctx: FetchContext): c is Cached {
    return c !== undefined && this.#valid(c) && !ctx.force && c.token !== this.#rejected.get(key);
  }

  async #fetch(
    key: string,
    stale: Cached | undefined,
    ctx: FetchContext,
  ): Promise<{ value: Cached; ttlUntil: number }> {
    const now = this.#now();
    const provider = ctx.account.provider;
    // An open breaker answers before any lock or request: a dead or frozen endpoint costs no wait.
    const gate = this.#breaker.acquire(provider);
    const blocked = gate.kind === 'blocked' ? gate.until : this.#backoff.blockedUntil(key, now);
    if (blocked) {
      if (gate.kind === 'probe') this.#breaker.release(provider);
      if (this.#servable(stale, key, ctx)) {
        return { value: stale, ttlUntil: Math.min(blocked, stale.expiresAt - stale.minValidity) };
      }
      throw new ProxyError(
        'token_unavailable',
        gate.kind === 'blocked' ? 'token endpoint circuit open' : 'token endpoint in backoff',
        { detail: gate.kind === 'blocked' ? 'breaker_open' : 'backoff' },
      );
    }
    let outcome: LockOutcome;
    try {
      outcome =
        ctx.handler.per !== 'grant'
          ? await this.#fetchShared(key, ctx, stale, now)
          : await this.#o.store.withGrantLock(ctx.account.id, (tx) =>
              this.#refreshLocked(tx, key, ctx, stale),
            );
    } finally {
      // A probe that found a fresh stored token (or failed before asking) leaves the next one to probe.
      if (gate.kind === 'probe') this.#breaker.release(provider);
    }

    switch (outcome.type) {
      case 'ok':
        if (outcome.fetched) this.#backoff.succeed(key);
        this.#rejected.delete(key);
        return { value: outcome.value, ttlUntil: outcome.value.refreshAt };
      case 'no_grant':
        throw new ProxyError('no_grant', 'account has no grant');
      case 'needs_consent':
        throw this.#needsConsent('grant needs consent');
      case 'failed':
        return this.#afterFailure(key, ctx, outcome.failure, outcome.fallback);
    }
  }

  async #refreshLocked(
    tx: GrantTx,
    key: string,
    ctx: FetchContext,
    stale: Cached | undefined,
  ): Promise<LockOutcome> {
    // The lock may have taken long: judge the stored token by the time now.
    const now = this.#now();
    const grant = await tx.get();
    if (!grant) return { type: 'no_grant' };
    if (grant.status === 'needs_consent' || !grant.refreshToken) return { type: 'needs_consent' };
    // The stored access token is the grant's main one: another resource's is never served from it.
    const stored = ctx.audience ? undefined : this.#fromGrant(grant);
    // Another instance (or a previous run) may already hold a fresh token: use it.
    const replacedByForce = ctx.force && stored?.token === stale?.token;
    if (
      stored &&
      stored.refreshAt > now &&
      this.#valid(stored) &&
      !replacedByForce &&
      stored.token !== this.#rejected.get(key)
    ) {
      return { type: 'ok', value: stored, fetched: false };
    }
    let committed: string | undefined;
    const commit = tx.commitRefreshToken?.bind(tx);
    const onRotated = commit
      ? async (refreshToken: string) => {
          try {
            await commit(refreshToken);
            committed = refreshToken;
          } catch (err) {
            this.#log.error(
              { accountId: ctx.account.id, err: messageOf(err) },
              'rotated refresh token not saved at once; saving it with the access token',
            );
          }
        }
      : undefined;
    const got = await this.#call(ctx, grant, now, onRotated);
    if ('failure' in got) {
      const { failure } = got;
      if (failure.result === 'invalid_scope') return { type: 'failed', failure, fallback: undefined };
      if (failure.result === 'invalid_grant') {
        await tx.update({ status: 'needs_consent', lastError: failure.message });
      } else {
        await tx.update({ lastError: failure.message });
      }
      const fallback = [stale, stored].find((c) => this.#servable(c, key, ctx));
      return { type: 'failed', failure, fallback };
    }
    const t = got.tokens;
    if (committed !== undefined && (await tx.get())?.refreshToken !== committed) {
      // Another instance refreshed after our early commit (PostgreSQL re-locks): its tokens are newer.
      return { type: 'ok', value: this.#toCached(t, grant.scope), fetched: true };
    }
    if (ctx.audience) {
      // Another resource's token stays in memory; a rotated refresh token is persisted all the same.
      await tx.update({
        refreshToken: t.refreshToken ?? grant.refreshToken,
        lastError: null,
        status: 'active',
      });
      return { type: 'ok', value: this.#toCached(t, undefined), fetched: true };
    }
    // Persisted (the access token with the rotated refresh token) before anyone uses it.
    await tx.update({
      accessToken: t.accessToken,
      accessTokenExpiresAt: t.expiresAt,
      refreshToken: t.refreshToken ?? grant.refreshToken,
      scope: t.scope ?? grant.scope,
      lastRefreshAt: t.issuedAt,
      lastError: null,
      status: 'active',
    });
    return { type: 'ok', value: this.#toCached(t, grant.scope), fetched: true };
  }

  async #fetchShared(
    key: string,
    ctx: FetchContext,
    stale: Cached | undefined,
    now: number,
  ): Promise<LockOutcome> {
    const grant = await this.#o.store.getGrant(ctx.account.id);
    if (!grant) return { type: 'no_grant' };
    const got = await this.#call(ctx, grant, now);
    if ('failure' in got) {
      // App-only and service-account grants have no user consent to lose: every failure is "unavailable".
      const failure: RefreshFailure =
        got.failure.result === 'invalid_grant' ? { ...got.failure, result: 'unavailable' } : got.failure;
      const fallback = this.#servable(stale, key, ctx) ? stale : undefined;
      return { type: 'failed', failure, fallback };
    }
    return { type: 'ok', value: this.#toCached(got.tokens), fetched: true };
  }

  /** One token-endpoint request, measured and classified. */
  async #call(
    ctx: FetchContext,
    grant: GrantRecord,
    now: number,
    onRotated?: (refreshToken: string) => Promise<void>,
  ): Promise<{ tokens: TokenSet } | { failure: RefreshFailure }> {
    const provider = this.#o.providers.get(ctx.account.provider);
    const labels = { provider: provider.name };
    const started = performance.now();
    try {
      const tokens = await ctx.handler.fetchToken({
        account: ctx.account,
        grant,
        provider,
        now,
        clock: this.#now,
        onRotated,
        audience: ctx.audience,
      });
      this.#breaker.succeed(provider.name);
      this.#o.metrics?.tokenRefreshes.inc({ ...labels, result: 'success' });
      if (tokens.expiresAt - tokens.issuedAt < SHORT_LIFETIME_FACTOR * this.#minValidity) {
        this.#o.metrics?.shortLivedTokens.inc(labels);
      }
      this.#log.debug(
        { provider: provider.name, accountId: ctx.account.id, kind: ctx.handler.kind },
        'token refreshed',
      );
      return { tokens };
    } catch (err) {
      const failure = classifyTokenError(err, this.#now(), { secondResource: ctx.audience !== undefined });
      // invalid_grant or invalid_scope is an answer about the grant: the endpoint works. Anything else is an outage.
      if (failure.result === 'invalid_grant' || failure.result === 'invalid_scope')
        this.#breaker.succeed(provider.name);
      else this.#breaker.fail(provider.name, failure.retryAfterMs);
      this.#o.metrics?.tokenRefreshes.inc({ ...labels, result: failure.result });
      this.#log.warn(
        {
          provider: provider.name,
          accountId: ctx.account.id,
          kind: ctx.handler.kind,
          result: failure.result,
        },
        `token refresh failed: ${failure.message}`,
      );
      return { failure };
    } finally {
      this.#o.metrics?.tokenRefreshSeconds.observe(labels, (performance.now() - started) / 1000);
    }
  }

  async #afterFailure(
    key: string,
    ctx: FetchContext,
    failure: RefreshFailure,
    fallback: Cached | undefined,
  ): Promise<{ value: Cached; ttlUntil: number }> {
    if (failure.result === 'invalid_scope') throw this.#scopeMissing(ctx.audience);
    if (failure.result === 'invalid_grant') {
      await this.#o.store
        .audit(ACTOR, 'grant.needs_consent', ctx.account.id, failure.message)
        .catch((err: unknown) => this.#log.error({ err }, 'audit write failed'));
      throw this.#needsConsent('refresh token rejected by the provider (invalid_grant)');
    }
    const until = this.#backoff.fail(key, this.#now(), failure.retryAfterMs);
    // Serve a still-valid token through the outage; look again once the backoff ends.
    if (fallback)
      return { value: fallback, ttlUntil: Math.min(until, fallback.expiresAt - fallback.minValidity) };
    throw new ProxyError('token_unavailable', failure.message, { detail: failure.result });
  }

  #fromGrant(g: GrantRecord): Cached | undefined {
    if (!g.accessToken || !g.accessTokenExpiresAt) return undefined;
    const issued = g.lastRefreshAt ?? g.accessTokenExpiresAt - 3600_000;
    return this.#cached(g.accessToken, issued, g.accessTokenExpiresAt, g.scope ?? undefined);
  }

  #toCached(t: TokenSet, grantScope?: string | null): Cached {
    return this.#cached(t.accessToken, t.issuedAt, t.expiresAt, t.scope ?? grantScope ?? undefined);
  }

  #cached(token: string, issuedAt: number, expiresAt: number, scope: string | undefined): Cached {
    const lifetime = Math.max(0, expiresAt - issuedAt);
    return {
      token,
      expiresAt,
      scope,
      refreshAt: refreshAt(issuedAt, expiresAt, this.#o.tokens),
      // A provider issuing 5 s tokens would otherwise have every fresh token refused.
      minValidity: Math.min(this.#minValidity, lifetime / SHORT_LIFETIME_FACTOR),
    };
  }
}

function accountKey(account: AccountRecord, audience: TokenAudience | undefined): string {
  return audience ? `${account.id}#${audience.key}` : String(account.id);
}
