import type { Config, ListenerConfig } from '../../config/schema.js';
import type { LoginRunner } from '../../core/login-runner.js';
import type { Metrics } from '../../metrics.js';
import type { PreauthGate } from '../../net/gate.js';
import { sessionLimitsFromConfig } from '../../net/limits.js';
import type { SessionFactory } from '../../net/listener.js';
import { sharedCapabilities } from './capabilities.js';
import { type Pop3Limits, Pop3Session } from './frontdoor.js';

export { createPop3UpstreamConnector } from './upstream.js';

export function pop3LimitsFromConfig(cfg: Config['limits']): Pop3Limits {
  return { ...sessionLimitsFromConfig(cfg), lineBytes: cfg.line_bytes };
}

/** POP3's front door for one listener: a pre-auth session per connection. */
export function pop3FrontDoor(
  cfg: ListenerConfig,
  deps: {
    runner: LoginRunner;
    limits: Pop3Limits;
    metrics: Metrics;
    /** What each upstream reachable from this listener advertised in CAPA (undefined: not contacted yet). */
    upstreamCapabilities: () => ReadonlyArray<readonly string[] | undefined>;
    gate?: PreauthGate | undefined;
  },
): SessionFactory {
  return (socket, peer, ctx) =>
    new Pop3Session(
      socket,
      peer,
      {
        listener: cfg.name,
        tlsMode: cfg.tls,
        allowCleartextLogin: cfg.allow_cleartext_login,
        secureContext: ctx.secureContext,
        runner: deps.runner,
        limits: deps.limits,
        metrics: deps.metrics,
        gate: deps.gate,
        capabilities: () => sharedCapabilities(deps.upstreamCapabilities()),
      },
      ctx.log,
    );
}
