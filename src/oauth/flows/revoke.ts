import { tokenRevocation } from 'openid-client';
import type { GrantRecord } from '../../store/types.js';
import type { OAuthProvider } from '../provider.js';

export type RevocationOutcome = 'revoked' | 'not_offered' | 'nothing_to_revoke';

/**
 * RFC 7009 at the provider, refresh token first (revoking it ends the whole grant at most
 * servers), then the cached access token. Throws when the provider refuses.
 */
export async function revokeAtProvider(
  provider: OAuthProvider,
  grant: GrantRecord,
): Promise<RevocationOutcome> {
  const tokens: [string, string][] = [];
  if (grant.refreshToken) tokens.push([grant.refreshToken, 'refresh_token']);
  if (grant.accessToken) tokens.push([grant.accessToken, 'access_token']);
  if (tokens.length === 0) return 'nothing_to_revoke';
  const config = await provider.configuration();
  if (!config.serverMetadata().revocation_endpoint) return 'not_offered';
  for (const [token, hint] of tokens) await tokenRevocation(config, token, { token_type_hint: hint });
  return 'revoked';
}
