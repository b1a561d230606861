import { randomBytes, randomInt, type ScryptOptions, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * App passwords: generated here, shown once, stored only as a salted scrypt hash.
 * Alphabet: lowercase letters and digits minus look-alikes (0 o 1 l i) — 31 symbols,
 * 4.95 bits each; 24 symbols = 118 bits, typed as six groups of four.
 */
export const PASSWORD_ALPHABET = 'abcdefghjkmnpqrstuvwxyz23456789';
export const PASSWORD_LENGTH = 24;
const GROUP = 4;

/** Bits of entropy in a generated password (for docs and tests). */
export const PASSWORD_BITS = PASSWORD_LENGTH * Math.log2(PASSWORD_ALPHABET.length);

/**
 * scrypt cost: N=2^14, r=8, p=1 (16 MiB) measured 50–75 ms per hash on this project's
 * 2-core test machine (N=2^15 took 110–165 ms); the verified-credential cache means a client
 * pays it once per TTL, not per connection.
 */
export const DEFAULT_PARAMS = { N: 2 ** 14, r: 8, p: 1 } as const;
const KEY_LEN = 32;
const SALT_LEN = 16;
/** Inputs longer than this cannot be a generated password; refuse before hashing. */
const MAX_INPUT = 256;

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

export function generateAppPassword(): string {
  let s = '';
  for (let i = 0; i < PASSWORD_LENGTH; i++) {
    if (i > 0 && i % GROUP === 0) s += '-';
    s += PASSWORD_ALPHABET[randomInt(PASSWORD_ALPHABET.length)];
  }
  return s;
}

/** The form that is hashed: any case, with or without dashes and spaces. */
export function normalizeAppPassword(input: string): string {
  return input.replace(/[\s-]/g, '').toLowerCase();
}

function scryptAsync(pw: string, salt: Buffer, p: ScryptParams): Promise<Buffer> {
  const opts: ScryptOptions = { N: p.N, r: p.r, p: p.p, maxmem: 128 * p.N * p.r * 2 + 1024 * 1024 };
  // Async scrypt runs on the libuv thread pool, so the event loop keeps serving sessions.
  return new Promise((resolve, reject) => {
    scrypt(pw, salt, KEY_LEN, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** `scrypt$N=16384,r=8,p=1$<salt b64>$<hash b64>` */
export async function hashAppPassword(
  password: string,
  params: ScryptParams = DEFAULT_PARAMS,
): Promise<string> {
  const salt = randomBytes(SALT_LEN);
  const key = await scryptAsync(normalizeAppPassword(password), salt, params);
  return `scrypt$N=${params.N},r=${params.r},p=${params.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

interface ParsedHash {
  params: ScryptParams;
  salt: Buffer;
  key: Buffer;
}

function parseHash(encoded: string): ParsedHash | null {
  const m = /^scrypt\$N=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/.exec(encoded);
  if (!m) return null;
  const [, n, r, p, salt = '', key = ''] = m;
  const params = { N: Number(n), r: Number(r), p: Number(p) };
  // Refuse absurd stored parameters rather than let one row exhaust memory.
  if (params.N < 2 || params.N > 2 ** 20 || params.r < 1 || params.r > 32 || params.p < 1 || params.p > 16) {
    return null;
  }
  return { params, salt: Buffer.from(salt, 'base64'), key: Buffer.from(key, 'base64') };
}

/** Constant-time check of `password` against an encoded hash; malformed hashes never match. */
export async function verifyAppPassword(password: string, encoded: string): Promise<boolean> {
  const parsed = parseHash(encoded);
  const pw = normalizeAppPassword(password.slice(0, MAX_INPUT));
  if (!parsed) {
    // Same work as a real check so a broken row does not show up in timing.
    await scryptAsync(pw, randomBytes(SALT_LEN), DEFAULT_PARAMS);
    return false;
  }
  const key = await scryptAsync(pw, parsed.salt, parsed.params);
  return key.length === parsed.key.length && timingSafeEqual(key, parsed.key) && password.length <= MAX_INPUT;
}
