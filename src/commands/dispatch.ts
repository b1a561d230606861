import { loadConfig } from '../config/load.js';
import { createLogger } from '../log.js';
import { Keyring } from '../store/crypto.js';
import { openStore } from '../store/index.js';
import type { GrantStore } from '../store/types.js';
import { runAccountCommand } from './account.js';
import type { CommandContext } from './context.js';
import { runGrantCommand } from './grant.js';
import { keyCommandNeedsStore, runKeyCommand } from './key.js';

type AdminCommand = 'account' | 'grant' | 'key';

const RUNNERS: Record<AdminCommand, (args: string[], ctx: CommandContext) => Promise<number>> = {
  account: runAccountCommand,
  grant: runGrantCommand,
  key: runKeyCommand,
};

/** A store stand-in for help output and `key generate`, which must work without a database. */
const noStore = new Proxy({} as GrantStore, {
  get() {
    throw new Error('this command does not open the store');
  },
});

function needsStore(command: AdminCommand, args: string[]): boolean {
  if (args.length === 0 || args.some((a) => a === '--help' || a === '-h' || a === 'help')) return false;
  return command !== 'key' || keyCommandNeedsStore(args);
}

/** Loads config, keyring and store, runs one admin command, closes the store. */
export async function runAdminCommand(
  command: AdminCommand,
  args: string[],
  configFile: string,
  io: { out: (s: string) => void; err: (s: string) => void },
): Promise<number> {
  const { config } = loadConfig(configFile);
  const log = createLogger({
    level: process.env.LOG_LEVEL ?? 'warn',
    format: 'json',
    destination: process.stderr,
  });
  const base = { config, out: io.out, err: io.err, stdin: process.stdin, log };
  if (!needsStore(command, args)) {
    return RUNNERS[command](args, { ...base, store: noStore, keyring: Keyring.random('unused') });
  }
  const keyring = Keyring.fromConfig(config.encryption, config.data_dir, log);
  const store = await openStore(config, keyring, log);
  try {
    await store.migrate();
    return await RUNNERS[command](args, { ...base, store, keyring });
  } finally {
    await store.close();
  }
}
