import type { Protocol, ProviderConfig, UpstreamConfig } from './schema.js';
import { upstreamSchema } from './schema.js';

/**
 * Fills a provider's endpoints, scopes and upstream server from its preset. Explicit keys in
 * the config always win, so every preset field is overridable.
 */
export function applyPreset(p: ProviderConfig): ProviderConfig {
  switch (p.preset) {
    case 'microsoft': {
      const tenant = p.tenant ?? 'organizations';
      const base = `https://login.microsoftonline.com/${encodeURIComponent(tenant)}/oauth2/v2.0`;
      return {
        ...p,
        authorization_endpoint: p.authorization_endpoint ?? `${base}/authorize`,
        token_endpoint: p.token_endpoint ?? `${base}/token`,
        device_authorization_endpoint: p.device_authorization_endpoint ?? `${base}/devicecode`,
        scopes: p.scopes ?? ['https://outlook.office.com/IMAP.AccessAsUser.All', 'offline_access'],
        app_only_scope: p.app_only_scope ?? 'https://outlook.office365.com/.default',
        upstreams: {
          imap: {
            host: 'outlook.office365.com',
            port: 993,
            tls: 'implicit',
            post_login_probe: true,
            ...imapUpstream(p),
          },
        },
      };
    }
    case 'google':
      return {
        ...p,
        authorization_endpoint: p.authorization_endpoint ?? 'https://accounts.google.com/o/oauth2/v2/auth',
        token_endpoint: p.token_endpoint ?? 'https://oauth2.googleapis.com/token',
        device_authorization_endpoint:
          p.device_authorization_endpoint ?? 'https://oauth2.googleapis.com/device/code',
        revocation_endpoint: p.revocation_endpoint ?? 'https://oauth2.googleapis.com/revoke',
        scopes: p.scopes ?? ['https://mail.google.com/'],
        app_only_scope: p.app_only_scope ?? 'https://mail.google.com/',
        upstreams: {
          imap: {
            host: 'imap.gmail.com',
            port: 993,
            tls: 'implicit',
            mechanism: 'xoauth2',
            ...imapUpstream(p),
          },
        },
      };
    case 'oidc':
    case 'generic':
      return {
        ...p,
        scopes: p.scopes ?? ['openid', 'email', 'offline_access'],
        upstreams: { imap: imapUpstream(p) },
      };
  }
}

/** `upstream` is the older spelling of `upstreams.imap`; the schema refuses both at once. */
function imapUpstream(p: ProviderConfig): Partial<UpstreamConfig> | undefined {
  return p.upstreams?.imap ?? p.upstream;
}

/** The complete upstream settings of one protocol for a provider, with an optional per-account override. */
export function upstreamFor(
  p: ProviderConfig,
  protocol: Protocol,
  override?: Record<string, unknown> | null,
): UpstreamConfig {
  return upstreamSchema.parse({ ...p.upstreams?.[protocol], ...(override ?? {}) });
}
