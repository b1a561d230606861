import { reloadRoute } from '../admin/reload.js';
import { startProxy } from '../app/app.js';
import {
  isClusterWorker,
  onReloadRequest,
  resolveWorkers,
  runPrimary,
  startWorker,
  workerConfig,
} from '../app/cluster.js';
import { fileReloader, type ReloadOutcome } from '../app/reload.js';
import { version } from '../cli.js';
import { loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';

/** `imap-oauth-proxy serve`: runs until SIGTERM/SIGINT, then drains and exits 0; SIGHUP reloads. */
export async function runServe(configFile: string): Promise<number> {
  const { config } = loadConfig(configFile);
  const log = createLogger({ level: config.log.level, format: config.log.format });
  const workers = resolveWorkers(config.workers);
  const worker = isClusterWorker();
  if (!worker)
    log.info(
      { config: configFile, version: version(), pid: process.pid, workers },
      'starting imap-oauth-proxy',
    );
  if (!worker && workers > 1) {
    const code = await runPrimary(config, { log, workers, version: version(), configFile });
    log.flush();
    return code;
  }
  // Bound once the app runs; POST /reload before that answers like a refused reload.
  let reload: (() => Promise<ReloadOutcome>) | undefined;
  const notYet = async (): Promise<ReloadOutcome> => ({
    result: 'failed',
    problems: ['the proxy is still starting'],
    restartNeeded: [],
  });
  const app = worker
    ? await startWorker(config, { log, version: version() })
    : await startProxy(config, {
        log,
        version: version(),
        routes: ({ config: c, authLimiter }) => [
          reloadRoute({ config: c, authLimiter, reload: () => (reload ?? notYet)() }),
        ],
      });
  reload = fileReloader({
    file: configFile,
    log,
    count: (result) => app.metrics.configReloads.inc({ result }),
    apply: (next) => app.reload(worker ? workerConfig(next) : next),
  });
  const reloadNow = reload;
  // SIGHUP (systemctl reload, kill -HUP): re-read the config and certificates, drop no session.
  if (!worker) process.on('SIGHUP', () => void reloadNow());
  else onReloadRequest(reloadNow);
  if (!worker) log.info('ready');
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals | 'disconnect') => {
      if (stopping) {
        // A terminal's SIGINT reaches workers as well as the primary, which then sends SIGTERM.
        if (worker) return;
        log.warn({ signal }, 'second signal: exiting now');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'stopping: no new connections, draining sessions');
      app.close().then(resolve, (err: unknown) => {
        log.error({ err }, 'error while stopping');
        resolve();
      });
    };
    // `on`, not `once`: a second signal during the drain must reach `stop` (exit now), not Node's default.
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // A worker whose primary is gone stops too.
    if (worker) process.once('disconnect', () => stop('disconnect'));
  });
  log.info('stopped');
  log.flush();
  // The IPC channel to the primary would keep a worker's event loop alive.
  if (worker && process.connected) process.disconnect();
  return 0;
}
