import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

const P = 'imap_proxy_';

/**
 * Every metric the proxy exports. Label values are drawn from bounded sets (login results,
 * provider names from config, listener names from config) — never a user name or address.
 */
export function createMetrics(opts: { defaults?: boolean } = {}) {
  const registry = new Registry();
  // The event-loop lag sampler's timer wakes the process: every 10 ms (the default) cost an idle proxy ~0.7 % of a core.
  if (opts.defaults !== false)
    collectDefaultMetrics({ register: registry, prefix: P, eventLoopMonitoringPrecision: 100 });
  const r = [registry];
  const grantSource: GrantSource = {};
  const splicedSource: { flush?: () => void } = {};
  return {
    registry,
    /** Set `count` and the grants gauge is read from the store at every scrape. */
    grantSource,
    /** Set `flush` and live sessions' bytes are added to spliced_bytes_total at every scrape. */
    splicedSource,
    connections: new Counter({
      name: `${P}connections_total`,
      help: 'Client connections accepted, by protocol, listener and TLS mode',
      labelNames: ['protocol', 'listener', 'tls'] as const,
      registers: r,
    }),
    breakerState: new Gauge({
      name: `${P}provider_breaker_state`,
      help: 'Token endpoint circuit breaker per provider: 0 closed (requests go out), 1 half-open (one probe out), 2 open (refreshes fail at once)',
      labelNames: ['provider'] as const,
      registers: r,
    }),
    breakerTransitions: new Counter({
      name: `${P}provider_breaker_transitions_total`,
      help: 'Token endpoint circuit breaker state changes per provider, by the state entered',
      labelNames: ['provider', 'to'] as const,
      registers: r,
    }),
    configReloads: new Counter({
      name: `${P}config_reloads_total`,
      help: 'Config reloads (SIGHUP, POST /reload) by result: success, invalid (refused, the old config keeps running), failed (partly applied)',
      labelNames: ['result'] as const,
      registers: r,
    }),
    certificateReloads: new Counter({
      name: `${P}certificate_reloads_total`,
      help: 'Listener certificates re-read because their files changed on disk, by listener and result',
      labelNames: ['listener', 'result'] as const,
      registers: r,
    }),
    tlsConnections: new Counter({
      name: `${P}tls_connections_total`,
      help: 'Client TLS handshakes completed (implicit TLS or STARTTLS), by protocol, listener and negotiated TLS version: shows which devices still use old TLS',
      labelNames: ['protocol', 'listener', 'version'] as const,
      registers: r,
    }),
    logins: new Counter({
      name: `${P}logins_total`,
      help: 'Client login attempts by protocol and result (success or failure reason)',
      labelNames: ['protocol', 'result'] as const,
      registers: r,
    }),
    preauthRejections: new Counter({
      name: `${P}preauth_rejections_total`,
      help: 'Connections closed before login by the front door, by protocol and reason',
      labelNames: ['protocol', 'reason'] as const,
      registers: r,
    }),
    tarpitConnections: new Counter({
      name: `${P}tarpit_connections_total`,
      help: 'Refused connections by protocol, reason (address_locked, too_many_from_address, too_many_unauthenticated) and result: held (unanswered for limits.tarpit_seconds, then closed) or full (the tarpit bound was reached: closed at once)',
      labelNames: ['protocol', 'reason', 'result'] as const,
      registers: r,
    }),
    tarpitHeld: new Gauge({
      name: `${P}tarpit_held_connections`,
      help: 'Refused connections held in the tarpit now',
      registers: r,
    }),
    limiter: new Counter({
      name: `${P}limiter_actions_total`,
      help: 'Brute-force limiter actions by scope (user, address, admin) and action (delayed, refused)',
      labelNames: ['scope', 'action'] as const,
      registers: r,
    }),
    tokenRefreshes: new Counter({
      name: `${P}token_refreshes_total`,
      help: 'Token endpoint requests by provider and result',
      labelNames: ['provider', 'result'] as const,
      registers: r,
    }),
    grantKeepalive: new Counter({
      name: `${P}grant_keepalive_total`,
      help: 'Keepalive refreshes of idle grants by provider and result (refreshed, needs_consent, failed)',
      labelNames: ['provider', 'result'] as const,
      registers: r,
    }),
    notifications: new Counter({
      name: `${P}notifications_total`,
      help: 'Webhook notifications by kind (grant.needs_consent, grant.recovered) and result (sent, failed after the retry bound or a refusal, dropped on a full queue or at shutdown)',
      labelNames: ['kind', 'result'] as const,
      registers: r,
    }),
    shortLivedTokens: new Counter({
      name: `${P}short_lived_tokens_total`,
      help: 'Access tokens issued to live under 20 s, by provider: handed out until a quarter of their lifetime remains instead of 5 s',
      labelNames: ['provider'] as const,
      registers: r,
    }),
    upstreamConnects: new Counter({
      name: `${P}upstream_connects_total`,
      help: 'Upstream connection attempts by protocol, provider and result',
      labelNames: ['protocol', 'provider', 'result'] as const,
      registers: r,
    }),
    upstreamAuths: new Counter({
      name: `${P}upstream_auths_total`,
      help: 'Upstream SASL authentications by protocol, provider, mechanism and result',
      labelNames: ['protocol', 'provider', 'mechanism', 'result'] as const,
      registers: r,
    }),
    splicedBytes: new Counter({
      name: `${P}spliced_bytes_total`,
      help: 'Bytes spliced after login, by protocol and direction (client_to_upstream, upstream_to_client)',
      labelNames: ['protocol', 'direction'] as const,
      registers: r,
      collect() {
        splicedSource.flush?.();
      },
    }),
    graphRequests: new Counter({
      name: `${P}graph_requests_total`,
      help: 'Microsoft Graph requests of SMTP graph delivery by provider, call (send_mail, create_draft, patch, attach, create_upload_session, upload, send_draft, delete_draft) and HTTP status (or error: timeout, network)',
      labelNames: ['provider', 'call', 'status'] as const,
      registers: r,
    }),
    graphDeliveries: new Counter({
      name: `${P}graph_deliveries_total`,
      help: 'Messages handed to Microsoft Graph by provider and result (delivered, throttled, unavailable, bad_message, access_denied, too_large, timeout, token_unavailable, needs_consent, recipient_mismatch, aborted)',
      labelNames: ['provider', 'result'] as const,
      registers: r,
    }),
    graphDeliveryBytes: new Counter({
      name: `${P}graph_delivery_bytes_total`,
      help: 'Message bytes delivered through Microsoft Graph by provider',
      labelNames: ['provider'] as const,
      registers: r,
    }),
    activeSessions: new Gauge({
      name: `${P}active_sessions`,
      help: 'Open client connections by protocol, listener and phase (preauth, spliced)',
      labelNames: ['protocol', 'listener', 'phase'] as const,
      registers: r,
    }),
    sessionsTerminated: new Counter({
      name: `${P}sessions_terminated_total`,
      help: 'Live spliced sessions ended by the proxy because access was withdrawn, by protocol and reason (account_disabled, account_removed, no_grant, needs_consent)',
      labelNames: ['protocol', 'reason'] as const,
      registers: r,
    }),
    grantsByStatus: new Gauge({
      name: `${P}grants`,
      help: 'Stored grants by status (alert on needs_consent)',
      labelNames: ['status'] as const,
      registers: r,
      // Every worker reads the same store: a cluster scrape must not add their answers up.
      aggregator: 'max',
      // Read at scrape time, so a grant that just lost consent shows on the next scrape.
      async collect() {
        if (!grantSource.count) return;
        try {
          const counts = await grantSource.count();
          for (const [status, n] of Object.entries(counts)) this.set({ status }, n);
        } catch {
          // Keep the last values; /readyz reports an unreachable store.
        }
      },
    }),
    buildInfo: new Gauge({
      name: `${P}build_info`,
      help: 'Build information; the value is always 1',
      labelNames: ['version', 'node'] as const,
      registers: r,
      aggregator: 'max',
    }),
    loginSeconds: new Histogram({
      name: `${P}login_duration_seconds`,
      help: 'Time from the client login command to its reply, by protocol and result',
      labelNames: ['protocol', 'result'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    tokenRefreshSeconds: new Histogram({
      name: `${P}token_refresh_duration_seconds`,
      help: 'Token endpoint request latency by provider',
      labelNames: ['provider'] as const,
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    graphDeliverySeconds: new Histogram({
      name: `${P}graph_delivery_duration_seconds`,
      help: 'Time from the end of a message (DATA or last BDAT) to Graph accepting it, by provider',
      labelNames: ['provider'] as const,
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: r,
    }),
    upstreamConnectSeconds: new Histogram({
      name: `${P}upstream_connect_duration_seconds`,
      help: 'Upstream connect + TLS + greeting latency by protocol and provider',
      labelNames: ['protocol', 'provider'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
  };
}

export interface GrantSource {
  count?: (() => Promise<Record<string, number>>) | undefined;
}

export type Metrics = ReturnType<typeof createMetrics>;
