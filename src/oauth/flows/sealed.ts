import type { Keyring } from '../../store/crypto.js';

/**
 * Small JSON values sealed with the store keyring (AES-256-GCM): the /connect state cookie and
 * the links `account link` prints. `purpose` is the associated data, so a value made for one
 * use is refused for another; `exp` makes it short-lived.
 */
export function seal(
  keyring: Keyring,
  purpose: string,
  value: object,
  ttlMs: number,
  now = Date.now(),
): string {
  return keyring.encrypt(JSON.stringify({ ...value, exp: now + ttlMs }), `onboarding/${purpose}`);
}

/** The sealed value, or null when it is forged, tampered, for another purpose or expired. */
export function unseal<T extends object>(
  keyring: Keyring,
  purpose: string,
  blob: string,
  now = Date.now(),
): T | null {
  try {
    const v = JSON.parse(keyring.decrypt(blob, `onboarding/${purpose}`)) as T & { exp?: unknown };
    return typeof v.exp === 'number' && v.exp > now ? v : null;
  } catch {
    return null;
  }
}
