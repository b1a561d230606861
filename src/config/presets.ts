import type { TokenAudience } from '../oauth/types.js';
import type { Protocol, ProviderConfig, UpstreamConfig } from './schema.js';
import { upstreamSchema } from './schema.js';

/** SMTP logins of a `smtp_delivery: graph` provider: the proxy sends each message with Graph. */
export interface GraphDelivery {
  /** Graph base URL (graph_url). */
  readonly url: string;
  readonly saveToSentItems: boolean;
  readonly timeoutMs: number;
  readonly maxMessageBytes: number;
  readonly maxRecipients: number;
}

/** A protocol's complete upstream settings: every key resolved, the port included. */
export type ResolvedUpstream = UpstreamConfig & {
  readonly port: number;
  /** Set when this protocol's sessions end in the proxy and go on through Microsoft Graph. */
  readonly graph?: GraphDelivery;
  /** Tokens for this upstream are for another resource than the grant's main one. */
  readonly token_audience?: TokenAudience;
};

/** Upstream port when the config names none, by protocol and TLS mode. */
const UPSTREAM_PORTS: Record<Protocol, Record<UpstreamConfig['tls'], number>> = {
  imap: { implicit: 993, starttls: 143 },
  smtp: { implicit: 465, starttls: 587 },
  pop3: { implicit: 995, starttls: 110 },
};

const MS_SCOPES: Record<Protocol, string> = {
  imap: 'https://outlook.office.com/IMAP.AccessAsUser.All',
  smtp: 'https://outlook.office.com/SMTP.Send',
  pop3: 'https://outlook.office.com/POP.AccessAsUser.All',
};
const GOOGLE_SCOPE = 'https://mail.google.com/';

/**
 * Delegated Graph scopes for SMTP graph delivery at this Graph endpoint (national clouds have
 * their own): Mail.Send for sendMail, Mail.ReadWrite for drafts (large messages, no Sent Items copy).
 */
export function graphDelegatedScope(graphUrl: string): string {
  const origin = new URL(graphUrl).origin;
  return `${origin}/Mail.Send ${origin}/Mail.ReadWrite`;
}

/**
 * Fills a provider's endpoints, scopes and upstream servers from its preset. `protocols` are
 * the ones the listeners speak: the delegated scopes ask for exactly what they need. Explicit
 * keys in the config always win, so every preset field is overridable.
 */
export function applyPreset(p: ProviderConfig, protocols: ReadonlySet<Protocol>): ProviderConfig {
  switch (p.preset) {
    case 'microsoft': {
      const tenant = p.tenant ?? 'organizations';
      const base = `https://login.microsoftonline.com/${encodeURIComponent(tenant)}/oauth2/v2.0`;
      const graph = p.smtp_delivery === 'graph';
      const graphScope = p.graph_scope ?? graphDelegatedScope(p.graph_url);
      // Graph delivery sends through Graph, not SMTP: consent is asked for Graph's scopes instead of SMTP.Send.
      const wanted = [...protocols].flatMap((proto) =>
        proto === 'smtp' && graph ? graphScope.split(' ') : [MS_SCOPES[proto]],
      );
      return {
        ...p,
        graph_scope: graphScope,
        graph_app_only_scope: p.graph_app_only_scope ?? `${new URL(p.graph_url).origin}/.default`,
        authorization_endpoint: p.authorization_endpoint ?? `${base}/authorize`,
        token_endpoint: p.token_endpoint ?? `${base}/token`,
        device_authorization_endpoint: p.device_authorization_endpoint ?? `${base}/devicecode`,
        scopes: p.scopes ?? [...wanted, 'offline_access'],
        // `.default` carries every application permission granted (IMAP/POP.AccessAsApp, SMTP.SendAsApp).
        app_only_scope: p.app_only_scope ?? 'https://outlook.office365.com/.default',
        upstreams: {
          imap: {
            host: 'outlook.office365.com',
            tls: 'implicit',
            post_login_probe: true,
            required_scope: MS_SCOPES.imap,
            ...imapUpstream(p),
          },
          smtp: {
            host: 'smtp.office365.com',
            port: 587,
            tls: 'starttls',
            mechanism: 'xoauth2',
            required_scope: MS_SCOPES.smtp,
            ...p.upstreams?.smtp,
          },
          pop3: {
            host: 'outlook.office365.com',
            port: 995,
            tls: 'implicit',
            mechanism: 'xoauth2',
            required_scope: MS_SCOPES.pop3,
            ...p.upstreams?.pop3,
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
        scopes: p.scopes ?? [GOOGLE_SCOPE],
        app_only_scope: p.app_only_scope ?? GOOGLE_SCOPE,
        upstreams: {
          imap: {
            host: 'imap.gmail.com',
            tls: 'implicit',
            mechanism: 'xoauth2',
            required_scope: GOOGLE_SCOPE,
            ...imapUpstream(p),
          },
          smtp: {
            host: 'smtp.gmail.com',
            port: 465,
            tls: 'implicit',
            mechanism: 'xoauth2',
            required_scope: GOOGLE_SCOPE,
            ...p.upstreams?.smtp,
          },
          pop3: {
            host: 'pop.gmail.com',
            port: 995,
            tls: 'implicit',
            mechanism: 'xoauth2',
            required_scope: GOOGLE_SCOPE,
            ...p.upstreams?.pop3,
          },
        },
      };
    case 'oidc':
    case 'generic': {
      const imap = imapUpstream(p);
      return {
        ...p,
        scopes: p.scopes ?? ['openid', 'email', 'offline_access'],
        upstreams: {
          ...(imap ? { imap } : {}),
          ...(p.upstreams?.smtp ? { smtp: p.upstreams.smtp } : {}),
          ...(p.upstreams?.pop3 ? { pop3: p.upstreams.pop3 } : {}),
        },
      };
    }
  }
}

/** Does this provider serve `protocol`: an upstream server, or for SMTP delivery through Graph? */
export function hasUpstream(p: ProviderConfig, protocol: Protocol): boolean {
  return (protocol === 'smtp' && p.smtp_delivery === 'graph') || Boolean(p.upstreams?.[protocol]?.host);
}

/** `upstream` is the older spelling of `upstreams.imap`; the schema refuses both at once. */
function imapUpstream(p: ProviderConfig): Partial<UpstreamConfig> | undefined {
  return p.upstreams?.imap ?? p.upstream;
}

/**
 * The complete upstream settings of one protocol for a provider. A per-account override
 * (same keys) applies to IMAP, or to another protocol when nested under its name.
 */
export function upstreamFor(
  p: ProviderConfig,
  protocol: Protocol,
  override?: Record<string, unknown> | null,
): ResolvedUpstream {
  if (protocol === 'smtp' && p.smtp_delivery === 'graph') return graphUpstream(p);
  const nested = override?.[protocol];
  const own =
    protocol === 'imap'
      ? Object.fromEntries(Object.entries(override ?? {}).filter(([k]) => !(k in UPSTREAM_PORTS)))
      : nested !== null && typeof nested === 'object'
        ? (nested as Record<string, unknown>)
        : {};
  return resolveUpstream(protocol, { ...p.upstreams?.[protocol], ...own });
}

/**
 * The Graph endpoint as an upstream: nothing dials it (host and port only name the target for
 * capabilities and pools); tokens are for Graph's scopes.
 */
function graphUpstream(p: ProviderConfig): ResolvedUpstream {
  const url = new URL(p.graph_url);
  const base = resolveUpstream('smtp', { host: url.hostname, port: Number(url.port) || 443 });
  return {
    ...base,
    graph: {
      url: p.graph_url,
      saveToSentItems: p.graph_save_to_sent_items,
      timeoutMs: Math.round(p.graph_timeout_seconds * 1000),
      maxMessageBytes: p.graph_max_message_bytes,
      maxRecipients: p.graph_max_recipients,
    },
    token_audience: {
      key: 'graph',
      scope: p.graph_scope,
      resource: p.graph_resource,
      appOnlyScope: p.graph_app_only_scope,
    },
  };
}

/** Validates upstream settings and fills the defaults, the port by protocol and TLS mode. */
export function resolveUpstream(protocol: Protocol, settings: Record<string, unknown>): ResolvedUpstream {
  const u = upstreamSchema.parse(settings);
  return { ...u, port: u.port ?? UPSTREAM_PORTS[protocol][u.tls] };
}
