import { version } from '../cli.js';
import { loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { startProxy } from '../proxy/app.js';

/** `imap-oauth-proxy serve`: runs until SIGTERM/SIGINT, then drains and exits 0. */
export async function runServe(configFile: string): Promise<number> {
  const { config } = loadConfig(configFile);
  const log = createLogger({ level: config.log.level, format: config.log.format });
  log.info({ config: configFile, version: version(), pid: process.pid }, 'starting imap-oauth-proxy');
  const app = await startProxy(config, { log, version: version() });
  log.info('ready');
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) {
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
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  log.info('stopped');
  log.flush();
  return 0;
}
