import { AsyncLocalStorage } from 'node:async_hooks';
import {
  type CustomFetch,
  clientCredentialsGrant,
  refreshTokenGrant,
  type TokenEndpointResponse,
} from 'openid-client';
import type { AccountRecord, GrantKind, GrantRecord } from '../store/types.js';
import { withHttpTrace } from './http-trace.js';
import type { OAuthProvider } from './provider.js';
import type { TokenAudience } from './types.js';

/** A token as the broker needs it; `refreshToken` is set when the server rotated it. */
export interface TokenSet {
  accessToken: string;
  /** Epoch ms. */
  expiresAt: number;
  /** Epoch ms when it was issued (to compute the refresh-ahead point). */
  issuedAt: number;
  refreshToken?: string;
  scope?: string;
}

export interface GrantContext {
  account: AccountRecord;
  /** The stored grant, re-read under the grant lock. */
  grant: GrantRecord;
  provider: OAuthProvider;
  now: number;
  /** Reads the clock when the token response arrives (the token's lifetime starts there). */
  clock?: () => number;
  /**
   * Called with a rotated refresh token as soon as the token response arrives, before
   * openid-client parses or validates it: the server has already spent the old one.
   */
  onRotated?: (refreshToken: string) => void | Promise<void>;
  /** A second resource's token is wanted (only handlers with `audiences` are asked). */
  audience?: TokenAudience | undefined;
}

/**
 * One way of getting an access token. `per: 'provider'` tokens (app-only) are shared by all
 * accounts of a provider; `per: 'grant'` tokens are per account and persisted (refresh
 * tokens); `per: 'account'` tokens are per account, minted without a stored secret
 * (service-account JWT bearer) and kept only in memory.
 */
export interface GrantHandler {
  readonly kind: GrantKind;
  readonly per: 'grant' | 'provider' | 'account';
  /** Can mint tokens for another resource from the same grant (TokenAudience). */
  readonly audiences?: boolean;
  /** Throws whatever openid-client throws; the broker classifies it. */
  fetchToken(ctx: GrantContext): Promise<TokenSet>;
}

/** Seconds assumed when a server omits expires_in (RFC 6749 makes it optional). */
const DEFAULT_LIFETIME_S = 3600;

export function toTokenSet(res: TokenEndpointResponse, now: number): TokenSet {
  if (typeof res.access_token !== 'string' || res.access_token === '') {
    throw new Error('token response without access_token');
  }
  const lifetime =
    typeof res.expires_in === 'number' && res.expires_in > 0 ? res.expires_in : DEFAULT_LIFETIME_S;
  return {
    accessToken: res.access_token,
    expiresAt: now + lifetime * 1000,
    issuedAt: now,
    refreshToken:
      typeof res.refresh_token === 'string' && res.refresh_token !== '' ? res.refresh_token : undefined,
    scope: typeof res.scope === 'string' ? res.scope : undefined,
  };
}

/** What the token request of one fetchToken call is watched for (see rotationCapture). */
interface TokenWatch {
  sent?: string;
  clock: () => number;
  onRotated?: (refreshToken: string) => void | Promise<void>;
  receivedAt?: number;
}

const watches = new AsyncLocalStorage<TokenWatch>();

/** Runs one token request under a watch; the token's lifetime counts from its response's arrival. */
async function watched(
  ctx: GrantContext,
  sent: string | undefined,
  request: () => Promise<TokenEndpointResponse>,
): Promise<TokenSet> {
  const watch: TokenWatch = { sent, clock: ctx.clock ?? Date.now, onRotated: ctx.onRotated };
  const { result } = await withHttpTrace(() =>
    watches.run(watch, async () => {
      const res = await request();
      return toTokenSet(res, watch.receivedAt ?? watch.clock());
    }),
  );
  return result;
}

/**
 * openid-client customFetch wrapper: notes when a watched response arrived and hands a rotated
 * refresh token to `onRotated` before returning the response to openid-client (which may still
 * validate, fetch keys or fail) — the window in which a crash loses a spent grant.
 */
export function rotationCapture(inner: CustomFetch): CustomFetch {
  return async (url, options) => {
    const res = await inner(url, options);
    const watch = watches.getStore();
    if (!watch) return res;
    watch.receivedAt = watch.clock();
    if (!res.ok || !watch.onRotated) return res;
    let rotated: unknown;
    try {
      rotated = (JSON.parse(await res.clone().text()) as { refresh_token?: unknown } | null)?.refresh_token;
    } catch {
      return res; // Not JSON: openid-client reports it.
    }
    if (typeof rotated === 'string' && rotated !== '' && rotated !== watch.sent) {
      await watch.onRotated(rotated);
    }
    return res;
  };
}

/** Token request parameters naming a second resource: `scope` and the RFC 8707 `resource`. */
function audienceParams(
  scope: string | undefined,
  resource: string | undefined,
): Record<string, string> | undefined {
  const p: Record<string, string> = {};
  if (scope) p.scope = scope;
  if (resource) p.resource = resource;
  return Object.keys(p).length > 0 ? p : undefined;
}

export const refreshTokenHandler: GrantHandler = {
  kind: 'refresh_token',
  per: 'grant',
  audiences: true,
  async fetchToken(ctx) {
    const refreshToken = ctx.grant.refreshToken;
    if (!refreshToken) throw new Error('grant has no refresh token');
    const a = ctx.audience;
    const params = a ? audienceParams(a.scope, a.resource) : undefined;
    return watched(ctx, refreshToken, async () =>
      refreshTokenGrant(await ctx.provider.configuration(), refreshToken, params),
    );
  },
};

export const clientCredentialsHandler: GrantHandler = {
  kind: 'client_credentials',
  per: 'provider',
  audiences: true,
  async fetchToken(ctx) {
    const a = ctx.audience;
    const params = a
      ? audienceParams(a.appOnlyScope, a.resource)
      : audienceParams(ctx.provider.config.app_only_scope, undefined);
    return watched(ctx, undefined, async () =>
      clientCredentialsGrant(await ctx.provider.configuration(), params),
    );
  },
};

export const DEFAULT_GRANT_HANDLERS: readonly GrantHandler[] = [
  refreshTokenHandler,
  clientCredentialsHandler,
];
