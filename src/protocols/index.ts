import type { Config, ListenerConfig, Protocol } from '../config/schema.js';
import type { LoginRunner } from '../core/login-runner.js';
import type { UpstreamConnector } from '../core/upstream.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { PreauthGate } from '../net/gate.js';
import type { SessionFactory } from '../net/listener.js';
import { createUpstreamConnector, imapFrontDoor, limitsFromConfig } from './imap/index.js';
import { createPop3UpstreamConnector, pop3FrontDoor, pop3LimitsFromConfig } from './pop3/index.js';
import { smtpFrontDoor, smtpLimitsFromConfig, smtpUpstreamConnector } from './smtp/index.js';

/** Everything the composition root needs to run one protocol. */
export interface ProtocolModule {
  /** Client-facing ports by TLS mode (what a client expects; listeners still name their own). */
  readonly defaultPorts: { readonly starttls: number; readonly implicit: number };
  /** The front door that runs each connection of a listener until its login is handed over. */
  frontDoor(
    cfg: ListenerConfig,
    deps: {
      runner: LoginRunner;
      limits: Config['limits'];
      metrics: Metrics;
      /** What each upstream server of this protocol advertised when last contacted (undefined: not yet). */
      upstreamCapabilities: () => ReadonlyArray<readonly string[] | undefined>;
      /** Bounds connections not yet logged in (shared by every listener of the process). */
      gate?: PreauthGate;
    },
  ): SessionFactory;
  /** Dials and authenticates the protocol's upstream server. */
  upstreamConnector(deps: { metrics: Metrics; log: Logger; limits: Config['limits'] }): UpstreamConnector;
}

/** The registry: one entry per protocol folder; the config schema's enum names the same set. */
export const PROTOCOLS: Readonly<Record<Protocol, ProtocolModule>> = {
  imap: {
    defaultPorts: { starttls: 143, implicit: 993 },
    frontDoor: (cfg, deps) => imapFrontDoor(cfg, { ...deps, limits: limitsFromConfig(deps.limits) }),
    upstreamConnector: createUpstreamConnector,
  },
  smtp: {
    defaultPorts: { starttls: 587, implicit: 465 },
    frontDoor: (cfg, deps) => smtpFrontDoor(cfg, { ...deps, limits: smtpLimitsFromConfig(deps.limits) }),
    upstreamConnector: smtpUpstreamConnector,
  },
  pop3: {
    defaultPorts: { starttls: 110, implicit: 995 },
    frontDoor: (cfg, deps) => pop3FrontDoor(cfg, { ...deps, limits: pop3LimitsFromConfig(deps.limits) }),
    upstreamConnector: createPop3UpstreamConnector,
  },
};
