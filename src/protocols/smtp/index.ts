import { hostname } from 'node:os';
import type { Config, ListenerConfig } from '../../config/schema.js';
import type { LoginRunner } from '../../core/login-runner.js';
import type { Metrics } from '../../metrics.js';
import type { PreauthGate } from '../../net/gate.js';
import { sessionLimitsFromConfig } from '../../net/limits.js';
import type { SessionFactory } from '../../net/listener.js';
import { sharedExtensions } from './extensions.js';
import { type SmtpLimits, SmtpSession } from './frontdoor.js';

export { createSmtpUpstreamConnector } from './upstream.js';

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
