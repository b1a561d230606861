import type { AccountRecord } from '../store/types.js';

export interface AccessToken {
  token: string;
  /** Epoch milliseconds. */
  expiresAt: number;
  /** Space-separated scopes the token endpoint granted, when it said (app-only tokens often do not). */
  scope?: string | undefined;
}

/**
 * A second resource a grant's tokens are asked for (Microsoft Graph beside the mail servers):
 * its tokens are cached apart from the grant's main token and never stored.
 */
export interface TokenAudience {
  /** Names the cache entry (`graph`). */
  readonly key: string;
  /** Delegated scope asked with the refresh token. */
  readonly scope?: string | undefined;
  /** RFC 8707 resource indicator, for servers that use them. */
  readonly resource?: string | undefined;
  /** Scope of app-only (client-credentials) tokens for this resource. */
  readonly appOnlyScope?: string | undefined;
}

export interface TokenOptions {
  forceRefresh?: boolean;
  /** Another resource than the mail servers' (default: the grant's main token). */
  audience?: TokenAudience | undefined;
}

/**
 * Account → valid access token. Throws ProxyError with reason 'no_grant', 'needs_consent'
 * or 'token_unavailable'. Concurrent calls for one grant share one token-endpoint request.
 */
export interface TokenBroker {
  getAccessToken(account: AccountRecord, opts?: TokenOptions): Promise<AccessToken>;
  /** Upstream rejected this token: drop it so the next call refreshes. */
  reportRejected(account: AccountRecord, token: string, audience?: TokenAudience): void;
}
