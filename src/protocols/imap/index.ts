import type { ListenerConfig } from '../../config/schema.js';
import type { LoginRunner } from '../../core/login-runner.js';
import type { Metrics } from '../../metrics.js';
import type { PreauthGate } from '../../net/gate.js';
import type { SessionFactory } from '../../net/listener.js';
import { ImapPreauthSession } from './frontdoor.js';
import type { WireLimits } from './limits.js';

export { limitsFromConfig } from './limits.js';
export { createUpstreamConnector } from './upstream.js';

/** IMAP's front door for one listener: a pre-auth session per connection. */
export function imapFrontDoor(
  cfg: ListenerConfig,
  deps: { runner: LoginRunner; limits: WireLimits; metrics: Metrics; gate?: PreauthGate | undefined },
): SessionFactory {
  const { limits } = deps;
  return (socket, peer, ctx) =>
    new ImapPreauthSession(
      socket,
      peer,
      {
        listener: cfg.name,
        tlsMode: cfg.tls,
        allowCleartextLogin: cfg.allow_cleartext_login,
        secureContext: ctx.secureContext,
        runner: deps.runner,
        limits,
        metrics: deps.metrics,
        gate: deps.gate,
      },
      ctx.log,
    );
}
