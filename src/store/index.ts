import { join } from 'node:path';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Keyring } from './crypto.js';
import { PostgresGrantStore } from './postgres.js';
import { SqliteGrantStore } from './sqlite.js';
import type { GrantStore, RotationResult } from './types.js';

/** Where the SQLite file lives: `store.sqlite_path` as given, else `<data_dir>/proxy.db`. */
export function sqlitePath(config: Config): string {
  return config.store.sqlite_path ?? join(config.data_dir, 'proxy.db');
}

/** Opens and migrates the configured store. */
export async function openStore(config: Config, keyring: Keyring, log: Logger): Promise<GrantStore> {
  if (config.store.driver === 'postgres') {
    // The loader already requires it; checked again so a hand-built Config fails clearly.
    if (!config.store.postgres_url)
      throw new ConfigError('store.postgres_url is required for driver "postgres"');
    return PostgresGrantStore.open(config.store.postgres_url, keyring, log, {
      maxConnections: config.store.postgres_pool_size,
    });
  }
  return SqliteGrantStore.open(sqlitePath(config), keyring, log);
}

/** Re-encrypts every stored secret with the keyring's current key, in one transaction. */
export async function rotateKeys(store: GrantStore, actor = 'cli'): Promise<RotationResult> {
  return store.reencryptAll(actor);
}
