import { silentLogger } from '../../src/log.js';
import { Keyring } from '../../src/store/crypto.js';
import { SqliteGrantStore } from '../../src/store/sqlite.js';

/** The real SQLite grant store on a private in-memory database, migrated: for tests a store serves. */
export function memoryDbStore(keyring: Keyring = Keyring.random()): Promise<SqliteGrantStore> {
  return SqliteGrantStore.open(':memory:', keyring, silentLogger);
}
