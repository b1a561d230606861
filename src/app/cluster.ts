import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { AggregatorRegistry } from 'prom-client';
import { AdminAuthLimiter } from '../admin/auth-limiter.js';
import { mergeExpositions } from '../admin/cluster-metrics.js';
import { onboardingRoutes, splitConnectRoutes } from '../admin/onboarding/routes.js';
import { reloadRoute } from '../admin/reload.js';
import { AdminServer, metricsGate, send } from '../admin/server.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import { createMetrics } from '../metrics.js';
import { watchGrantChanges } from '../notify/transitions.js';
import { Notifier } from '../notify/webhook.js';
import { createProviderRegistry } from '../oauth/provider.js';
import { Keyring } from '../store/crypto.js';
import { openStore } from '../store/index.js';
import { type ProxyApp, type ReloadResult, startProxy } from './app.js';
import { fileReloader, type ReloadOutcome } from './reload.js';

/**
 * Multi-worker mode: the primary forks N workers that each run the whole proxy (startProxy)
 * on listeners shared through node:cluster (the primary accepts and hands connections out
 * round-robin). Token and credential caches are per worker; the grant store's lock keeps
 * refreshes single across processes. The primary alone serves admin HTTP on the configured
 * port: /metrics aggregates every worker's registry (series carry a `worker` label), /readyz
 * is ready when every worker is. Workers bind their own admin server to 127.0.0.1:0 (unused).
 * With admin.connect_port the self-service server is bound once too: every worker listens on
 * it, node:cluster hands the one socket's connections out like the IMAP listeners' (its OAuth
 * state lives in sealed cookies, so any worker can finish a sign-in another one started).
 */

const READY = 'imap-oauth-proxy:ready';
const RELOAD = 'imap-oauth-proxy:reload';
const RELOADED = 'imap-oauth-proxy:reloaded';
/** Set in the environment of the one worker that runs the idle-grant keepalive. */
const KEEPALIVE_ENV = 'IMAP_OAUTH_PROXY_KEEPALIVE';
/** A worker that has not answered a reload in this time counts as failed. */
const RELOAD_TIMEOUT_MS = 30_000;
/** A worker that exits before it is ready fails the start; later crashes are re-forked after this delay. */
const RESTART_DELAY_MS = 1000;
/** Beyond a worker's drain window, how long it gets to stop before it is killed. */
const STOP_GRACE_MS = 30_000;
/** At shutdown, how long the primary's queued notifications may still go out. */
const NOTIFY_GRACE_MS = 2000;

/** `workers: N | 'auto'` → a process count ('auto' = one per CPU). */
export function resolveWorkers(setting: number | 'auto'): number {
  return setting === 'auto' ? availableParallelism() : setting;
}

export function isClusterWorker(): boolean {
  return cluster.isWorker;
}

/** In a worker: runs startProxy with a private admin port and reports readiness to the primary. */
export async function startWorker(config: Config, opts: { log: Logger; version: string }): Promise<ProxyApp> {
  const id = String(cluster.worker?.id ?? 0);
  const metrics = createMetrics();
  metrics.registry.setDefaultLabels({ worker: id });
  AggregatorRegistry.setRegistries([metrics.registry]);
  // The constructor installs the IPC listener that answers the primary's metric requests.
  new AggregatorRegistry();
  const app = await startProxy(workerConfig(config), {
    log: opts.log.child({ worker: id }),
    metrics,
    version: opts.version,
    keepalive: process.env[KEEPALIVE_ENV] === '1',
  });
  process.send?.({ type: READY });
  return app;
}

/** A worker's config: its own admin server is private (127.0.0.1, any port); the primary serves the real one. */
export function workerConfig(config: Config): Config {
  return { ...config, admin: { ...config.admin, address: '127.0.0.1', port: 0 } };
}

/** In a worker: runs `reload` when the primary asks, and answers with the outcome. */
export function onReloadRequest(reload: () => Promise<ReloadOutcome>): void {
  process.on('message', (m: unknown) => {
    if ((m as { type?: unknown } | null)?.type !== RELOAD) return;
    void reload().then((outcome) => process.send?.({ type: RELOADED, outcome }));
  });
}

/** In the primary: forks the workers, serves admin HTTP, stops everything on SIGTERM/SIGINT. */
export async function runPrimary(
  config: Config,
  opts: { log: Logger; workers: number; version: string; configFile: string },
): Promise<number> {
  const log = opts.log.child({ component: 'cluster' });
  // Migrate (and create a key file if configured) once, before workers race for it. The store
  // stays open: the primary serves the admin port, /status and the onboarding pages included.
  const keyring = Keyring.fromConfig(config.encryption, config.data_dir, log);
  const store = await openStore(config, keyring, log);
  await store.migrate();

  const ready = new Set<number>();
  let stopping = false;
  let startFailed: ((err: Error) => void) | undefined;
  let allReady: (() => void) | undefined;

  // One worker refreshes idle grants (re-forked with the same role): N would multiply the rate.
  const fork = (keepalive: boolean): Worker => {
    const w = cluster.fork({ [KEEPALIVE_ENV]: keepalive ? '1' : '0' });
    w.on('message', (m: unknown) => {
      if ((m as { type?: unknown } | null)?.type === READY) {
        ready.add(w.id);
        log.info({ worker: w.id, pid: w.process.pid }, 'worker ready');
        if (ready.size >= opts.workers) allReady?.();
      }
    });
    w.once('exit', (code, signal) => {
      const wasReady = ready.delete(w.id);
      if (stopping) return;
      log.error({ worker: w.id, pid: w.process.pid, code, signal }, 'worker exited');
      if (!wasReady) startFailed?.(new Error(`worker ${w.id} exited (code ${code}) before it was ready`));
      else setTimeout(() => !stopping && fork(keepalive), RESTART_DELAY_MS).unref();
    });
    return w;
  };

  const stopWorkers = async (): Promise<void> => {
    stopping = true;
    const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w && !w.isDead());
    await Promise.all(
      alive.map(
        (w) =>
          new Promise<void>((resolve) => {
            const kill = setTimeout(
              () => w.process.kill('SIGKILL'),
              config.limits.shutdown_drain_seconds * 1000 + STOP_GRACE_MS,
            );
            w.once('exit', () => {
              clearTimeout(kill);
              resolve();
            });
            w.process.kill('SIGTERM');
          }),
      ),
    );
  };

  try {
    await new Promise<void>((resolve, reject) => {
      startFailed = reject;
      allReady = resolve;
      for (let i = 0; i < opts.workers; i++) fork(i === 0);
    });
  } catch (err) {
    log.error({ err }, 'cannot start workers');
    await stopWorkers();
    await store.close();
    return 1;
  }
  startFailed = undefined;
  allReady = undefined;

  const aggregator = new AggregatorRegistry();
  const token = config.admin.metrics_bearer_token;
  // The primary's own counters (admin limiter), merged into /metrics beside the workers'.
  const own = createMetrics({ defaults: false });
  own.registry.setDefaultLabels({ worker: 'primary' });
  const authLimiter = AdminAuthLimiter.fromConfig(config.limiter, own);
  // Workers share the IMAP sockets, so the configured ports are the ones clients reach.
  const addresses = Object.fromEntries(
    config.listeners.map((l) => [
      l.name,
      { address: l.address, port: l.port, family: l.address.includes(':') ? 'IPv6' : 'IPv4' },
    ]),
  );
  // The primary validates the file once; each worker then re-reads it and switches (its own metrics count it).
  const reloadAll = fileReloader({
    file: opts.configFile,
    log,
    // The primary counts only refused files; each worker counts what it applied (series carry `worker`).
    count: (result) => {
      if (result === 'invalid') own.configReloads.inc({ result });
    },
    apply: (next) => {
      notifier.configure(next.notifications, config.admin.public_url);
      return askWorkers(log);
    },
  });
  // The primary serves the onboarding pages: a reconnected mailbox is announced from here.
  const notifier = new Notifier({
    store,
    config: config.notifications,
    publicUrl: config.admin.public_url,
    metrics: own,
    log,
  });
  const pages = splitConnectRoutes(
    onboardingRoutes({
      store: watchGrantChanges(store, (id, event, reason) => notifier.grantChanged(id, event, reason)),
      config,
      keyring,
      providers: createProviderRegistry(config.providers),
      log: log.child({ component: 'onboarding' }),
      addresses,
      authLimiter,
    }),
    config.admin.connect_port !== undefined,
  ).admin;
  const admin = new AdminServer({
    address: config.admin.address,
    port: config.admin.port,
    metrics: createMetrics({ defaults: false }),
    log: log.child({ component: 'admin' }),
    readiness: [
      {
        name: 'workers',
        check: async () => {
          if (ready.size < opts.workers) throw new Error(`${ready.size}/${opts.workers} workers ready`);
        },
      },
    ],
    routes: [
      {
        method: 'GET',
        path: '/metrics',
        handler: async (req, res) => {
          if (!metricsGate(req, res, token, authLimiter)) return;
          const mine = [
            await own.registry.getSingleMetricAsString('imap_proxy_limiter_actions_total'),
            await own.registry.getSingleMetricAsString('imap_proxy_config_reloads_total'),
            await own.registry.getSingleMetricAsString('imap_proxy_notifications_total'),
          ].join('\n');
          send(res, 200, mergeExpositions(await aggregator.clusterMetrics(), mine), aggregator.contentType);
        },
      },
      reloadRoute({ config, authLimiter, reload: reloadAll }),
      ...pages,
    ],
  });
  try {
    log.info({ address: await admin.listen(), workers: opts.workers }, 'admin HTTP listening (primary)');
  } catch (err) {
    log.error({ err }, 'cannot start admin HTTP');
    await stopWorkers();
    await store.close();
    return 1;
  }
  log.info({ workers: opts.workers, pid: process.pid }, 'ready');

  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: killing workers');
        for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGKILL');
        return;
      }
      log.info({ signal }, 'stopping workers: no new connections, draining sessions');
      void stopWorkers().then(resolve);
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    process.on('SIGHUP', () => void reloadAll());
  });
  await admin.close();
  await notifier.close(NOTIFY_GRACE_MS);
  await store.close();
  log.info('stopped');
  return 0;
}

/** Sends every live worker the reload request and combines their answers. */
async function askWorkers(log: Logger): Promise<ReloadResult> {
  const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w && !w.isDead());
  const answers = await Promise.all(
    alive.map(
      (w) =>
        new Promise<ReloadOutcome>((resolve) => {
          const timer = setTimeout(() => {
            w.off('message', onMessage);
            resolve({ result: 'failed', problems: [`worker ${w.id} did not answer`], restartNeeded: [] });
          }, RELOAD_TIMEOUT_MS);
          const onMessage = (m: unknown) => {
            const msg = m as { type?: unknown; outcome?: ReloadOutcome } | null;
            if (msg?.type !== RELOADED || !msg.outcome) return;
            clearTimeout(timer);
            w.off('message', onMessage);
            resolve(msg.outcome);
          };
          w.on('message', onMessage);
          w.send({ type: RELOAD });
        }),
    ),
  );
  const problems = [...new Set(answers.flatMap((a) => a.problems))];
  const restartNeeded = [...new Set(answers.flatMap((a) => a.restartNeeded))];
  log.info({ workers: answers.length, problems: problems.length }, 'workers reloaded');
  return { result: problems.length === 0 ? 'success' : 'failed', problems, restartNeeded };
}
