import { clientCredentialsGrant, refreshTokenGrant, type TokenEndpointResponse } from 'openid-client';
import type { AccountRecord, GrantKind, GrantRecord } from '../store/types.js';
import { withHttpTrace } from './http-trace.js';
import type { OAuthProvider } from './provider.js';

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

export const refreshTokenHandler: GrantHandler = {
  kind: 'refresh_token',
  per: 'grant',
  async fetchToken({ grant, provider, now }) {
    if (!grant.refreshToken) throw new Error('grant has no refresh token');
    const refreshToken = grant.refreshToken;
    const { result } = await withHttpTrace(async () =>
      toTokenSet(await refreshTokenGrant(await provider.configuration(), refreshToken), now),
    );
    return result;
  },
};

export const clientCredentialsHandler: GrantHandler = {
  kind: 'client_credentials',
  per: 'provider',
  async fetchToken({ provider, now }) {
    const scope = provider.config.app_only_scope;
    const { result } = await withHttpTrace(async () =>
      toTokenSet(
        await clientCredentialsGrant(await provider.configuration(), scope ? { scope } : undefined),
        now,
      ),
    );
    return result;
  },
};

export const DEFAULT_GRANT_HANDLERS: readonly GrantHandler[] = [
  refreshTokenHandler,
  clientCredentialsHandler,
];
