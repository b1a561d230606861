import type { TokenEndpointResponse } from 'openid-client';
import type { GrantKind, GrantRecord, GrantStore } from '../../store/types.js';

/** Persists a freshly obtained refresh-token grant on an account (replacing any old grant). */
export async function storeRefreshGrant(
  store: GrantStore,
  accountId: number,
  tokens: TokenEndpointResponse,
  actor: string,
  now = Date.now(),
): Promise<void> {
  if (typeof tokens.refresh_token !== 'string' || tokens.refresh_token === '') {
    throw new Error('the provider issued no refresh token (is offline_access among the scopes?)');
  }
  const lifetime = typeof tokens.expires_in === 'number' && tokens.expires_in > 0 ? tokens.expires_in : 3600;
  await store.putGrant(
    accountId,
    {
      kind: 'refresh_token',
      status: 'active',
      refreshToken: tokens.refresh_token,
      accessToken: tokens.access_token,
      accessTokenExpiresAt: now + lifetime * 1000,
      scope: typeof tokens.scope === 'string' ? tokens.scope : null,
      lastRefreshAt: now,
      lastError: null,
    },
    actor,
  );
}

/** A grant with no stored token (app-only, service account): the broker mints tokens on demand. */
export function tokenlessGrant(kind: GrantKind): Omit<GrantRecord, 'accountId' | 'updatedAt'> {
  return {
    kind,
    status: 'active',
    refreshToken: null,
    accessToken: null,
    accessTokenExpiresAt: null,
    scope: null,
    lastRefreshAt: null,
    lastError: null,
  };
}
