import { hostname } from 'node:os';
import type { Config, ListenerConfig } from '../../config/schema.js';
import type { LoginRunner } from '../../core/login-runner.js';
import type { UpstreamConnector } from '../../core/upstream.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import type { PreauthGate } from '../../net/gate.js';
import { sessionLimitsFromConfig } from '../../net/limits.js';
import type { SessionFactory } from '../../net/listener.js';
import { sharedExtensions } from './extensions.js';
import { type SmtpLimits, SmtpSession } from './frontdoor.js';
import { createSmtpUpstreamConnector } from './upstream.js';

export { createSmtpUpstreamConnector };

/**
 * SMTP's upstream: the provider's submission server (AUTH XOAUTH2, then spliced), or for a
 * `smtp_delivery: graph` provider the in-process mail transaction that sends through Graph.
 */
export function smtpUpstreamConnector(deps: {
  metrics: Metrics;
  log: Logger;
  limits: Config['limits'];
}): UpstreamConnector {
  const smtp = createSmtpUpstreamConnector(deps);
  // Loaded only when a provider delivers through Graph.
  let graph: Promise<UpstreamConnector> | undefined;
  return {
    connect(target, labels, signal) {
      if (!target.graph) return smtp.connect(target, labels, signal);
      graph ??= import('./graph-upstream.js').then((m) => m.createGraphConnector(deps));
      return graph.then((g) => g.connect(target, labels, signal));
    },
  };
}

export function smtpLimitsFromConfig(cfg: Config['limits']): SmtpLimits {
  return { ...sessionLimitsFromConfig(cfg), lineBytes: cfg.line_bytes };
}

/** SMTP submission's front door for one listener: a pre-auth session per connection. */
export function smtpFrontDoor(
  cfg: ListenerConfig,
  deps: {
    runner: LoginRunner;
    limits: SmtpLimits;
    metrics: Metrics;
    /** What each upstream reachable from this listener advertised (undefined: not contacted yet). */
    upstreamCapabilities: () => ReadonlyArray<readonly string[] | undefined>;
    gate?: PreauthGate | undefined;
  },
): SessionFactory {
  const serverName = cfg.server_name ?? hostname();
  return (socket, peer, ctx) =>
    new SmtpSession(
      socket,
      peer,
      {
        listener: cfg.name,
        serverName,
        tlsMode: cfg.tls,
        allowCleartextLogin: cfg.allow_cleartext_login,
        secureContext: ctx.secureContext,
        runner: deps.runner,
        limits: deps.limits,
        metrics: deps.metrics,
        gate: deps.gate,
        extensions: () => sharedExtensions(deps.upstreamCapabilities()),
      },
      ctx.log,
    );
}
