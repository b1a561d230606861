/** SASL PLAIN (RFC 4616) and LOGIN helpers for the front door. */

const NUL = 0x00;
/** SASL LOGIN challenges, base64 of "Username:" and "Password:". */
export const LOGIN_USERNAME_CHALLENGE = Buffer.from('Username:').toString('base64');
export const LOGIN_PASSWORD_CHALLENGE = Buffer.from('Password:').toString('base64');

function isBase64Char(c: number): boolean {
  return (
    (c >= 0x41 && c <= 0x5a) ||
    (c >= 0x61 && c <= 0x7a) ||
    (c >= 0x30 && c <= 0x39) ||
    c === 0x2b ||
    c === 0x2f
  );
}

/** Strict base64: whole quads, padding only at the end. Null when malformed. */
export function decodeBase64(text: Buffer | string): Buffer | null {
  const b = typeof text === 'string' ? Buffer.from(text, 'latin1') : text;
  if (b.length % 4 !== 0) return null;
  let pad = 0;
  for (const [i, c] of b.entries()) {
    if (c === 0x3d) {
      if (i < b.length - 2) return null;
      pad++;
    } else if (pad > 0 || !isBase64Char(c)) return null;
  }
  return Buffer.from(b.toString('latin1'), 'base64');
}

export type PlainResult =
  | { ok: true; authcid: string; password: string }
  | { ok: false; why: 'malformed' | 'authzid_mismatch' };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** `[authzid] NUL authcid NUL passwd`; the authzid must be empty or equal to the authcid. */
export function parsePlain(msg: Buffer): PlainResult {
  const first = msg.indexOf(NUL);
  const second = first === -1 ? -1 : msg.indexOf(NUL, first + 1);
  if (second === -1 || msg.indexOf(NUL, second + 1) !== -1) return { ok: false, why: 'malformed' };
  let authzid: string;
  let authcid: string;
  let password: string;
  try {
    authzid = utf8.decode(msg.subarray(0, first));
    authcid = utf8.decode(msg.subarray(first + 1, second));
    password = utf8.decode(msg.subarray(second + 1));
  } catch {
    return { ok: false, why: 'malformed' };
  }
  if (authcid.length === 0) return { ok: false, why: 'malformed' };
  if (authzid !== '' && authzid !== authcid) return { ok: false, why: 'authzid_mismatch' };
  return { ok: true, authcid, password };
}

/** Decodes one SASL LOGIN response to text; null when not base64 or not UTF-8. */
export function decodeLoginResponse(line: Buffer | string): string | null {
  const raw = decodeBase64(line);
  if (raw === null) return null;
  try {
    return utf8.decode(raw);
  } catch {
    return null;
  }
}
