import { fetchUserInfo, type TokenEndpointResponse, type TokenEndpointResponseHelpers } from 'openid-client';
import type { OAuthProvider } from '../provider.js';

/** Claims that name the signed-in mailbox, best first (Microsoft puts the UPN in preferred_username). */
const MAILBOX_CLAIMS = ['email', 'preferred_username', 'upn'] as const;
const MAILBOX_RE = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

function pick(claims: Record<string, unknown> | undefined): string | undefined {
  for (const k of MAILBOX_CLAIMS) {
    const v = claims?.[k];
    if (typeof v === 'string' && MAILBOX_RE.test(v)) return v.toLowerCase();
  }
  return undefined;
}

/**
 * The signed-in mailbox address: from the (already validated) ID token, else from userinfo.
 * Returns undefined when the provider tells neither.
 */
export async function mailboxOf(
  provider: OAuthProvider,
  tokens: TokenEndpointResponse & TokenEndpointResponseHelpers,
): Promise<string | undefined> {
  const idClaims = tokens.claims() as Record<string, unknown> | undefined;
  const fromId = pick(idClaims);
  if (fromId) return fromId;
  const config = await provider.configuration();
  if (!idClaims || !config.serverMetadata().userinfo_endpoint || !tokens.access_token) return undefined;
  // The ID token's subject binds the userinfo answer to the same user.
  const info = await fetchUserInfo(config, tokens.access_token, String(idClaims.sub));
  return pick(info as Record<string, unknown>);
}

/** Whether a mailbox's domain is allowed (an empty list allows any). */
export function domainAllowed(mailbox: string, allowed: readonly string[]): boolean {
  if (allowed.length === 0) return true;
  const domain = mailbox.slice(mailbox.lastIndexOf('@') + 1).toLowerCase();
  return allowed.some((d) => d.toLowerCase().replace(/^@/, '') === domain);
}
