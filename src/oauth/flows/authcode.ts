import {
  authorizationCodeGrant,
  buildAuthorizationUrl,
  calculatePKCECodeChallenge,
  randomNonce,
  randomPKCECodeVerifier,
  randomState,
  type TokenEndpointResponse,
  type TokenEndpointResponseHelpers,
} from 'openid-client';
import type { OAuthProvider } from '../provider.js';

/** What the callback needs to finish a flow; kept sealed in a cookie, never in the URL. */
export interface PendingAuthorization {
  provider: string;
  state: string;
  nonce: string;
  verifier: string;
  redirectUri: string;
  /** Set for `account link` flows: the grant lands on this account. */
  accountId?: number;
}

/** Delegated scopes plus what identifies the signed-in mailbox (openid, email). */
export function interactiveScopes(provider: OAuthProvider): string {
  const scopes = new Set(provider.config.scopes ?? []);
  scopes.add('openid');
  scopes.add('email');
  if (provider.config.preset === 'microsoft') scopes.add('profile');
  return [...scopes].join(' ');
}

/**
 * What the code redemption asks for. Microsoft issues a token for one resource at a time: when
 * consent was asked for the mail servers and Graph together, the code is redeemed for the mail
 * servers' scopes and Graph tokens come later from the same refresh token.
 */
export function redemptionScopes(provider: OAuthProvider): string | undefined {
  const graph = provider.config.graph_scope?.split(' ') ?? [];
  const all = interactiveScopes(provider).split(' ');
  const others = all.filter((s) => !graph.includes(s));
  const mixed = graph.some((s) => all.includes(s)) && others.some((s) => s.includes('://'));
  return mixed ? others.join(' ') : undefined;
}

/** Authorization code + PKCE S256 with state and nonce: the URL to send the browser to. */
export async function beginAuthorization(
  provider: OAuthProvider,
  redirectUri: string,
  accountId?: number,
  loginHint?: string,
): Promise<{ url: URL; pending: PendingAuthorization }> {
  const config = await provider.configuration();
  const verifier = randomPKCECodeVerifier();
  const pending: PendingAuthorization = {
    provider: provider.name,
    state: randomState(),
    nonce: randomNonce(),
    verifier,
    redirectUri,
    ...(accountId !== undefined ? { accountId } : {}),
  };
  const params: Record<string, string> = {
    redirect_uri: redirectUri,
    scope: interactiveScopes(provider),
    state: pending.state,
    nonce: pending.nonce,
    code_challenge: await calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    // Refresh tokens need consent in several IdPs (Google: access_type=offline + prompt=consent).
    prompt: 'consent',
  };
  if (provider.config.preset === 'google') params.access_type = 'offline';
  if (loginHint) params.login_hint = loginHint;
  return { url: buildAuthorizationUrl(config, params), pending };
}

/** Checks state, exchanges the code with the PKCE verifier and validates the ID token nonce. */
export async function completeAuthorization(
  provider: OAuthProvider,
  callbackUrl: URL,
  pending: PendingAuthorization,
): Promise<TokenEndpointResponse & TokenEndpointResponseHelpers> {
  const config = await provider.configuration();
  const scope = redemptionScopes(provider);
  return authorizationCodeGrant(
    config,
    callbackUrl,
    {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
      expectedNonce: pending.nonce,
      idTokenExpected: true,
    },
    scope ? { scope } : undefined,
  );
}
