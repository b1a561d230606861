/**
 * Server responses. Everything written is built from the proxy's own words; the only client
 * bytes ever echoed are a tag the tokenizer already checked, so a password cannot leak here.
 */

export type Status = 'OK' | 'NO' | 'BAD';

const CRLF = '\r\n';

function withCode(code: string | undefined, text: string): string {
  return code ? `[${code}] ${text}` : text;
}

export function tagged(tag: string, status: Status, text: string, code?: string): string {
  return `${tag} ${status} ${withCode(code, text)}${CRLF}`;
}

export function untagged(text: string): string {
  return `* ${text}${CRLF}`;
}

export function untaggedStatus(status: Status | 'BYE' | 'PREAUTH', text: string, code?: string): string {
  return `* ${status} ${withCode(code, text)}${CRLF}`;
}

/** `+ text` continuation request (text may be base64 for SASL). */
export function continuation(text = ''): string {
  return `+ ${text}${CRLF}`;
}

/** True when a string can go out as a quoted string (7-bit, no CR/LF/NUL, short). */
function quotable(b: Buffer): boolean {
  if (b.length > 1024) return false;
  for (const c of b) {
    if (c === 0 || c === 0x0a || c === 0x0d || c >= 0x80) return false;
  }
  return true;
}

/**
 * An IMAP string: quoted with `\` and `"` escaped when that is safe, otherwise a
 * synchronizing-free literal form `{n}` CRLF bytes (servers never wait for `+`).
 */
export function imapString(value: string | Buffer): Buffer {
  const b = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  if (quotable(b)) {
    const escaped = b.toString('latin1').replace(/[\\"]/g, (m) => `\\${m}`);
    return Buffer.from(`"${escaped}"`, 'latin1');
  }
  return Buffer.concat([Buffer.from(`{${b.length}}${CRLF}`, 'latin1'), b]);
}

/** `nstring`: NIL for null, otherwise an IMAP string. */
export function nstring(value: string | Buffer | null): Buffer {
  return value === null ? Buffer.from('NIL') : imapString(value);
}
