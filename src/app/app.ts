import type { AddressInfo } from 'node:net';
import { StoreCredentialChecker } from '../accounts/credentials.js';
import { LoginLimiter } from '../accounts/limiter.js';
import { AdminAuthLimiter } from '../admin/auth-limiter.js';
import { createConnectServer } from '../admin/connect-server.js';
import { onboardingRoutes, splitConnectRoutes } from '../admin/onboarding/routes.js';
import { AdminServer, type Route } from '../admin/server.js';
import { hasUpstream, upstreamFor } from '../config/presets.js';
import type { Config, Protocol } from '../config/schema.js';
import { UpstreamCapabilities } from '../core/capabilities.js';
import { LoginRunner } from '../core/login-runner.js';
import { LoginPipeline } from '../core/pipeline.js';
import { startSessionRecheck, watchConsentLoss } from '../core/revocation.js';
import { SessionRegistry } from '../core/sessions.js';
import { messageOf } from '../errors.js';
import { type Logger, setLogLevel } from '../log.js';
import { createMetrics, type Metrics } from '../metrics.js';
import { PreauthGate } from '../net/gate.js';
import { sessionLimitsFromConfig } from '../net/limits.js';
import { WarmPool } from '../net/pool.js';
import { watchGrantChanges } from '../notify/transitions.js';
import { Notifier } from '../notify/webhook.js';
import { OAuthTokenBroker } from '../oauth/broker.js';
import { createJwtBearerHandler } from '../oauth/jwt-bearer.js';
import { GrantKeepalive, keepaliveSettings } from '../oauth/keepalive.js';
import { createProviderRegistry } from '../oauth/provider.js';
import { PROTOCOLS } from '../protocols/index.js';
import { Keyring } from '../store/crypto.js';
import { openStore } from '../store/index.js';
import type { GrantStore } from '../store/types.js';
import { ListenerSet } from './listeners.js';

export interface ProxyApp {
  readonly config: Config;
  readonly store: GrantStore;
  readonly metrics: Metrics;
  readonly broker: OAuthTokenBroker;
  readonly pipeline: LoginPipeline;
  /** Bound address of each listener, by name, and of the admin server. */
  readonly addresses: Record<string, AddressInfo>;
  readonly adminAddress: AddressInfo;
  /** Bound address of the separate self-service server (admin.connect_port), if configured. */
  readonly connectAddress: AddressInfo | undefined;
  /**
   * Applies a new config without dropping a session: log level, listeners (added, removed,
   * changed, certificates re-read), providers, limits, limiter and token settings. Settings
   * that need a restart are named in the result and keep their old values.
   */
  reload(next: Config): Promise<ReloadResult>;
  /** Stops accepting, says goodbye before login, drains spliced sessions (default: limits.shutdown_drain_seconds). */
  close(opts?: { drainMs?: number }): Promise<void>;
}

export interface ReloadResult {
  /** `failed`: applied except what `problems` names. */
  readonly result: 'success' | 'failed';
  readonly problems: readonly string[];
  /** Top-level settings that changed but take effect only after a restart. */
  readonly restartNeeded: readonly string[];
}

/** Settings a running process cannot change: the store, keys, workers, the admin servers. */
const RESTART_KEYS = ['data_dir', 'store', 'encryption', 'workers', 'admin'] as const;
/** At shutdown, how long queued notifications may still go out. */
const NOTIFY_GRACE_MS = 2000;

export interface StartOptions {
  log: Logger;
  metrics?: Metrics;
  version?: string;
  /** Extra admin routes (besides the onboarding pages, which are always added). */
  routes?: (deps: { store: GrantStore; config: Config; authLimiter: AdminAuthLimiter }) => Route[];
  /** Run the idle-grant keepalive here (default true; with several workers only one does). */
  keepalive?: boolean;
}

/** Builds and starts everything `serve` runs: store, broker, upstream, listeners, admin HTTP. */
export async function startProxy(config: Config, opts: StartOptions): Promise<ProxyApp> {
  const { log } = opts;
  const metrics = opts.metrics ?? createMetrics();
  metrics.buildInfo.set({ version: opts.version ?? '0.0.0', node: process.version }, 1);

  const keyring = Keyring.fromConfig(config.encryption, config.data_dir, log);
  const store = await openStore(config, keyring, log);
  await store.migrate();

  const limiter = new LoginLimiter(config.limiter, { metrics });
  const credentials = new StoreCredentialChecker({
    store,
    limiter,
    cacheSeconds: config.tokens.credential_cache_seconds,
    log: log.child({ component: 'credentials' }),
  });
  const providers = createProviderRegistry(config.providers);
  const sessions = new SessionRegistry({ metrics });
  const notifier = new Notifier({
    store,
    config: config.notifications,
    publicUrl: config.admin.public_url,
    metrics,
    log,
  });
  // Grants this process moves into or out of needs_consent (broker, onboarding) are announced.
  const announced = (s: GrantStore) =>
    watchGrantChanges(s, (id, event, reason) => notifier.grantChanged(id, event, reason));
  const broker = new OAuthTokenBroker({
    // A grant this process marks needs_consent ends the account's live sessions at once.
    store: announced(watchConsentLoss(store, (id) => sessions.end(id, 'needs_consent'))),
    providers,
    tokens: config.tokens,
    handlers: [createJwtBearerHandler()],
    ...(config.admin.public_url ? { publicUrl: config.admin.public_url } : {}),
    metrics,
    log, // the broker names itself (component: token-broker)
  });
  const upstreamLog = log.child({ component: 'upstream' });
  // One warm pool per protocol the listeners speak, around that protocol's upstream connector.
  const pools = new Map<Protocol, WarmPool>();
  const ensurePools = () => {
    const bounds = {
      size: config.limits.warm_upstream_connections,
      idleMs: Math.round(config.limits.warm_upstream_idle_seconds * 1000),
    };
    for (const protocol of new Set(config.listeners.map((l) => l.protocol))) {
      const existing = pools.get(protocol);
      if (existing) {
        existing.configure(bounds);
        continue;
      }
      const inner = PROTOCOLS[protocol].upstreamConnector({
        metrics,
        log: upstreamLog.child({ protocol }),
        limits: config.limits,
      });
      pools.set(protocol, new WarmPool(inner, { log: upstreamLog, ...bounds }));
    }
  };
  ensurePools();
  const closePools = () => {
    for (const p of pools.values()) p.close();
  };
  const capabilities = new UpstreamCapabilities();
  const pipeline = new LoginPipeline({
    config,
    credentials,
    broker,
    connectors: pools,
    sessions,
    capabilities,
    publicUrl: config.admin.public_url,
  });
  const loginTimeoutMs = () => sessionLimitsFromConfig(config.limits).loginTimeoutMs;
  const runner = new LoginRunner({ handler: pipeline, metrics, timeoutMs: loginTimeoutMs() });

  const gateLimits = () => ({
    perAddress: config.limits.preauth_per_address,
    total: config.limits.preauth_total,
  });
  const gate = new PreauthGate(gateLimits());
  const listeners = new ListenerSet({
    config,
    runner,
    metrics,
    log,
    capabilities,
    gate,
    refuseAddress: (address) => limiter.addressLocked(address),
  });
  const addresses = listeners.addresses;
  let admin: AdminServer | undefined;
  let connect: AdminServer | undefined;
  try {
    await listeners.start(config);
    learnUpstreams(config, pools, capabilities, upstreamLog);
    // One lockout per client address for /status and /metrics credentials together.
    const authLimiter = AdminAuthLimiter.fromConfig(config.limiter, metrics);
    const routes = splitConnectRoutes(
      [
        ...onboardingRoutes({
          store: announced(store),
          config,
          keyring,
          providers,
          addresses,
          authLimiter,
          log: log.child({ component: 'onboarding' }),
        }),
        ...(opts.routes?.({ store, config, authLimiter }) ?? []),
      ],
      config.admin.connect_port !== undefined,
    );
    admin = new AdminServer({
      address: config.admin.address,
      port: config.admin.port,
      metrics,
      log: log.child({ component: 'admin' }),
      metricsBearerToken: config.admin.metrics_bearer_token,
      readiness: [
        { name: 'store', check: () => store.ping() },
        {
          name: 'listeners',
          check: async () => {
            if (listeners.size !== config.listeners.length) throw new Error('not all listeners are bound');
          },
        },
      ],
      authLimiter,
      routes: routes.admin,
    });
    const adminAddress = await admin.listen();
    log.info({ address: adminAddress }, 'admin HTTP listening');
    connect = createConnectServer(config, routes.connect, {
      metrics,
      log: log.child({ component: 'connect' }),
    });
    const connectAddress = await connect?.listen();
    if (connectAddress) log.info({ address: connectAddress }, 'self-service HTTP listening');

    // Read at scrape time: a grant that just lost consent shows on the next scrape.
    metrics.grantSource.count = () => store.countGrantsByStatus();

    const adminServer = admin;
    const connectServer = connect;
    const recheck = () =>
      startSessionRecheck({
        registry: sessions,
        store,
        intervalMs: Math.round(config.limits.session_recheck_seconds * 1000),
        log: log.child({ component: 'sessions' }),
      });
    let stopRecheck = recheck();
    const keepalive = () => {
      const settings = keepaliveSettings(config.keepalive);
      if (opts.keepalive === false || !settings) return undefined;
      return new GrantKeepalive({ store, broker, settings, metrics, log }).start();
    };
    let keepaliveRun = keepalive();
    const reload = async (next: Config): Promise<ReloadResult> => {
      const restartNeeded = RESTART_KEYS.filter((k) => JSON.stringify(config[k]) !== JSON.stringify(next[k]));
      const recheckBefore = config.limits.session_recheck_seconds;
      setLogLevel(log, next.log.level);
      config.log = next.log;
      // Mutated in place: the limiter, broker and pipeline hold these very objects and read them per use.
      Object.assign(config.limits, next.limits);
      Object.assign(config.limiter, next.limiter);
      Object.assign(config.tokens, next.tokens);
      config.providers = next.providers;
      providers.update(next.providers);
      pipeline.providersChanged();
      runner.setTimeoutMs(loginTimeoutMs());
      gate.configure(gateLimits());
      config.listeners = next.listeners;
      ensurePools();
      const problems = await listeners.reload(config);
      if (config.limits.session_recheck_seconds !== recheckBefore) {
        stopRecheck();
        stopRecheck = recheck();
      }
      if (JSON.stringify(config.keepalive) !== JSON.stringify(next.keepalive)) {
        config.keepalive = next.keepalive;
        await keepaliveRun?.stop();
        keepaliveRun = keepalive();
      }
      config.notifications = next.notifications;
      notifier.configure(next.notifications, config.admin.public_url);
      learnUpstreams(config, pools, capabilities, upstreamLog);
      return { result: problems.length === 0 ? 'success' : 'failed', problems, restartNeeded };
    };
    return {
      config,
      store,
      metrics,
      broker,
      pipeline,
      addresses,
      adminAddress,
      connectAddress,
      reload,
      async close(closeOpts) {
        metrics.grantSource.count = undefined;
        stopRecheck();
        await keepaliveRun?.stop();
        closePools();
        await listeners.close(closeOpts?.drainMs ?? Math.round(config.limits.shutdown_drain_seconds * 1000));
        await adminServer.close();
        await connectServer?.close();
        // A receiver that is down delays the exit by this much at most.
        await notifier.close(NOTIFY_GRACE_MS);
        await store.close();
      },
    };
  } catch (err) {
    closePools();
    await listeners.close(0).catch(() => {});
    await admin?.close().catch(() => {});
    await connect?.close().catch(() => {});
    await store.close();
    throw err;
  }
}

/**
 * Contacts every upstream once at start, so front doors know at once what the servers
 * advertise (SMTP's EHLO reply depends on it). In the background: a down upstream delays
 * nothing; the connection goes to the warm pool for the first login.
 */
function learnUpstreams(
  config: Config,
  pools: ReadonlyMap<Protocol, WarmPool>,
  capabilities: UpstreamCapabilities,
  log: Logger,
): void {
  for (const [protocol, pool] of pools) {
    // IMAP clients ask for capabilities after login anyway; SMTP and POP3 clients keep what they saw before.
    if (protocol === 'imap') continue;
    for (const [provider, p] of Object.entries(config.providers)) {
      if (!hasUpstream(p, protocol)) continue;
      const target = upstreamFor(p, protocol);
      pool.connect(target, { provider }).then(
        (conn) => {
          capabilities.note(protocol, target, conn.capabilities);
          conn.recycle();
        },
        (err: unknown) =>
          log.warn(
            { protocol, provider, host: target.host, err: { message: messageOf(err) } },
            'upstream not reachable at start; its features are learned at the first login',
          ),
      );
    }
  }
}
