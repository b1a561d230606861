import type { AccountRecord } from '../store/types.js';

export interface AccessToken {
  token: string;
  /** Epoch milliseconds. */
  expiresAt: number;
  /** Space-separated scopes the token endpoint granted, when it said (app-only tokens often do not). */
  scope?: string | undefined;
}

/**
 * Account → valid access token. Throws ProxyError with reason 'no_grant', 'needs_consent'
 * or 'token_unavailable'. Concurrent calls for one grant share one token-endpoint request.
 */
export interface TokenBroker {
  getAccessToken(account: AccountRecord, opts?: { forceRefresh?: boolean }): Promise<AccessToken>;
  /** Upstream rejected this token: drop it so the next call refreshes. */
  reportRejected(account: AccountRecord, token: string): void;
}
