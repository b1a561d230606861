import { loadConfig } from '../config/load.js';
import type { Config } from '../config/schema.js';
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { ReloadResult } from './app.js';

/** What one reload did, as logged, counted and answered on POST /reload. */
export interface ReloadOutcome {
  /** `invalid`: the file was refused and the running config stays; `failed`: applied except `problems`. */
  readonly result: 'success' | 'invalid' | 'failed';
  readonly problems: readonly string[];
  readonly restartNeeded: readonly string[];
}

export interface FileReloaderOptions {
  readonly file: string;
  readonly log: Logger;
  /** Counts one outcome (config_reloads_total{result}). */
  readonly count: (result: ReloadOutcome['result']) => void;
  /** Applies a validated config (a process's ProxyApp.reload, or telling the workers). */
  readonly apply: (next: Config) => Promise<ReloadResult>;
}

/**
 * Re-reads the config file and applies it; one reload at a time (a second request waits for
 * the first). A file that does not validate changes nothing: the log says why, with file,
 * line and key, and `config_reloads_total{result="invalid"}` counts it.
 */
export function fileReloader(opts: FileReloaderOptions): () => Promise<ReloadOutcome> {
  let queue: Promise<unknown> = Promise.resolve();
  const once = async (): Promise<ReloadOutcome> => {
    let next: Config;
    try {
      next = loadConfig(opts.file).config;
    } catch (err) {
      const problems = messageOf(err).split('\n');
      opts.count('invalid');
      opts.log.error(
        { file: opts.file, problems },
        'reload refused: the config does not validate; the running config stays',
      );
      return { result: 'invalid', problems, restartNeeded: [] };
    }
    let r: ReloadResult;
    try {
      r = await opts.apply(next);
    } catch (err) {
      r = { result: 'failed', problems: [messageOf(err)], restartNeeded: [] };
    }
    opts.count(r.result);
    const fields = { file: opts.file, problems: r.problems, restartNeeded: r.restartNeeded };
    if (r.result === 'success') opts.log.info(fields, 'config reloaded');
    else opts.log.error(fields, 'config reloaded in part');
    if (r.restartNeeded.length > 0)
      opts.log.warn({ keys: r.restartNeeded }, 'these settings changed but take effect only after a restart');
    return { result: r.result, problems: r.problems, restartNeeded: r.restartNeeded };
  };
  return () => {
    const run = queue.then(once, once);
    queue = run;
    return run;
  };
}
