import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';

/**
 * Secrets at rest: AES-256-GCM with a fresh random 96-bit IV per value, directly under the
 * master key. Per-value data keys (envelope) would buy nothing here: the master key lives in
 * the same process, rotation re-encrypts every value anyway (`rotateKeys`), and a random IV
 * stays far below the 2^32-messages-per-key bound for a grant store. The key id travels with
 * each value so old keys keep decrypting until rotation; associated data (table, row, field)
 * makes a ciphertext copied into another row or field fail to decrypt.
 *
 * Stored form: `v1.<kid>.<iv base64url>.<ciphertext+tag base64url>`.
 */

const VERSION = 'v1';
const KID_RE = /^[A-Za-z0-9_-]{1,32}$/;
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class DecryptError extends Error {
  override readonly name = 'DecryptError';
}

/** `v1.<kid>.<iv>.<ciphertext>` → its three parts, or null when it is not of that form. */
function splitBlob(blob: string): { kid: string; ivB64: string; ctB64: string } | null {
  const [version, kid, ivB64, ctB64, ...more] = blob.split('.');
  if (version !== VERSION || kid === undefined || ivB64 === undefined || ctB64 === undefined) return null;
  return more.length === 0 ? { kid, ivB64, ctB64 } : null;
}

/** Parses one `<id>:<base64 32 bytes>` line; the message never contains the key itself. */
export function parseKeyLine(line: string, where: string): { id: string; key: Buffer } {
  const sep = line.indexOf(':');
  if (sep <= 0) throw new ConfigError(`${where}: expected "<id>:<base64 32 bytes>"`);
  const id = line.slice(0, sep).trim();
  const b64 = line.slice(sep + 1).trim();
  if (!KID_RE.test(id)) throw new ConfigError(`${where}: key id must be 1-32 of A-Z a-z 0-9 _ -`);
  const key = Buffer.from(b64, 'base64');
  if (key.length !== 32 || !/^[A-Za-z0-9+/=_-]+$/.test(b64)) {
    throw new ConfigError(`${where}: key "${id}" is not 32 bytes of base64`);
  }
  return { id, key };
}

/** A new key line for config or a key file (`key generate`). */
export function generateKeyLine(id = `k${Date.now().toString(36)}`): string {
  if (!KID_RE.test(id)) throw new ConfigError('key id must be 1-32 of A-Z a-z 0-9 _ -');
  return `${id}:${randomBytes(32).toString('base64')}`;
}

export class Keyring {
  readonly currentId: string;
  readonly #currentKey: Buffer;
  readonly #keys: Map<string, Buffer>;

  /** `keys[0]` is current (used for new values); the rest only decrypt. */
  constructor(keys: { id: string; key: Buffer }[]) {
    const [current] = keys;
    if (!current) throw new ConfigError('no encryption key configured');
    this.#keys = new Map();
    for (const k of keys) {
      if (this.#keys.has(k.id)) throw new ConfigError(`duplicate encryption key id "${k.id}"`);
      this.#keys.set(k.id, k.key);
    }
    this.currentId = current.id;
    this.#currentKey = current.key;
  }

  static random(id = 'test'): Keyring {
    return new Keyring([{ id, key: randomBytes(32) }]);
  }

  static fromConfig(
    enc: Config['encryption'],
    dataDir: string,
    log: Logger = silentLogger,
    home = homedir(),
  ): Keyring {
    if (enc.key !== undefined && enc.key.trim() !== '') {
      return new Keyring([parseKeyLine(enc.key, 'encryption.key')]);
    }
    if (enc.key_file === undefined) {
      throw new ConfigError(
        'encryption: set encryption.key ("<id>:<base64 32 bytes>", e.g. from ${ENV}) or encryption.key_file; ' +
          'generate one with `imap-oauth-proxy key generate`',
      );
    }
    const path = keyFilePath(enc.key_file, dataDir);
    const legacy = legacyKeyFile(enc.key_file, path, home);
    if (legacy) {
      log.warn(
        { keyFile: legacy, expected: path },
        'reading the encryption key from its old default location: move it to the data directory ' +
          '(back up the key and the database together; without the key every stored grant is lost)',
      );
      return Keyring.#fromFile(legacy);
    }
    if (!existsSync(path)) {
      if (!enc.create_key_file) {
        throw new ConfigError(`encryption.key_file ${path} does not exist (create_key_file is false)`);
      }
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      writeFileSync(path, `${generateKeyLine()}\n`, { mode: 0o600, flag: 'wx' });
      chmodSync(path, 0o600);
      log.warn(
        { keyFile: path },
        'CREATED A NEW ENCRYPTION KEY FILE. Back it up: without it every stored grant is unreadable. ' +
          'For production, provide the key from a secret store and set create_key_file: false.',
      );
    }
    return Keyring.#fromFile(path);
  }

  static #fromFile(path: string): Keyring {
    const lines = readFileSync(path, 'utf8')
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    if (lines.length === 0) throw new ConfigError(`encryption.key_file ${path} holds no key`);
    return new Keyring(lines.map((l, i) => parseKeyLine(l, `${path} line ${i + 1}`)));
  }

  has(id: string): boolean {
    return this.#keys.has(id);
  }

  encrypt(plain: string, aad: string): string {
    const iv = randomBytes(IV_BYTES);
    const c = createCipheriv('aes-256-gcm', this.#currentKey, iv);
    c.setAAD(Buffer.from(aad, 'utf8'));
    const ct = Buffer.concat([c.update(plain, 'utf8'), c.final(), c.getAuthTag()]);
    return `${VERSION}.${this.currentId}.${iv.toString('base64url')}.${ct.toString('base64url')}`;
  }

  /** Key id a stored value was encrypted with (rotation skips values already current). */
  static keyIdOf(blob: string): string | null {
    return splitBlob(blob)?.kid ?? null;
  }

  decrypt(blob: string, aad: string): string {
    const parts = splitBlob(blob);
    if (!parts) throw new DecryptError('not an encrypted value');
    const { kid, ivB64, ctB64 } = parts;
    const key = this.#keys.get(kid);
    if (!key) throw new DecryptError(`value was encrypted with unknown key id "${kid}"`);
    const iv = Buffer.from(ivB64, 'base64url');
    const data = Buffer.from(ctB64, 'base64url');
    if (iv.length !== IV_BYTES || data.length < TAG_BYTES)
      throw new DecryptError('truncated encrypted value');
    try {
      const d = createDecipheriv('aes-256-gcm', key, iv);
      d.setAAD(Buffer.from(aad, 'utf8'));
      d.setAuthTag(data.subarray(data.length - TAG_BYTES));
      return Buffer.concat([d.update(data.subarray(0, data.length - TAG_BYTES)), d.final()]).toString('utf8');
    } catch (cause) {
      throw new DecryptError(`cannot decrypt value with key "${kid}": wrong key, tampered or moved value`, {
        cause,
      });
    }
  }
}

/** Where a key file lives: a bare file name in the data directory (beside the store); a path as given. */
export function keyFilePath(keyFile: string, dataDir: string): string {
  return basename(keyFile) === keyFile ? join(dataDir, keyFile) : keyFile;
}

/** Before the key followed data_dir, the quick start kept it here whatever data_dir said. */
const LEGACY_KEY_DIR = join('.local', 'share', 'imap-oauth-proxy');

/** The old default location of a bare-named key file, when the key is there and not where it belongs now. */
function legacyKeyFile(keyFile: string, path: string, home: string): string | undefined {
  if (basename(keyFile) !== keyFile || existsSync(path)) return undefined;
  const legacy = join(home, LEGACY_KEY_DIR, keyFile);
  return legacy !== path && existsSync(legacy) ? legacy : undefined;
}

/** Associated data binding a ciphertext to its table, row and field. */
export function aadFor(table: string, rowId: number | string, field: string): string {
  return `${table}/${rowId}/${field}`;
}
