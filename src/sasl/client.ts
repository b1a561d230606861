import type { FailureDetail, FailureReason } from '../errors.js';

export type Mechanism = 'xoauth2' | 'oauthbearer';

/** XOAUTH2 initial response: base64("user=" U ^A "auth=Bearer " T ^A ^A). */
export function xoauth2Blob(user: string, token: string): string {
  return Buffer.from(`user=${user}\x01auth=Bearer ${token}\x01\x01`, 'utf8').toString('base64');
}

/** RFC 5801 saslname: ',' and '=' are escaped inside the gs2 authzid. */
function saslname(user: string): string {
  return user.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** OAUTHBEARER initial response (RFC 7628 §3.1): gs2 header, host, port, bearer token. */
export function oauthbearerBlob(user: string, token: string, host: string, port: number): string {
  const msg = `n,a=${saslname(user)},\x01host=${host}\x01port=${port}\x01auth=Bearer ${token}\x01\x01`;
  return Buffer.from(msg, 'utf8').toString('base64');
}

/** What a client sends to end a failed exchange after the server's error continuation. */
export function failureAck(mech: Mechanism): string {
  // XOAUTH2 (Google's spec) wants an empty response; RFC 7628 §3.2.3 wants a single ^A.
  return mech === 'xoauth2' ? '' : 'AQ==';
}

/**
 * `auto` prefers XOAUTH2: it is the mechanism Microsoft 365 (which advertises nothing else) and
 * Gmail document, and its blob does not depend on a host/port the server might compare.
 * OAUTHBEARER is used when it is the only one advertised.
 */
export function pickMechanism(pref: Mechanism | 'auto', capabilities: readonly string[]): Mechanism {
  if (pref !== 'auto') return pref;
  const caps = new Set(capabilities.map((c) => c.toUpperCase()));
  if (!caps.has('AUTH=XOAUTH2') && caps.has('AUTH=OAUTHBEARER')) return 'oauthbearer';
  return 'xoauth2';
}

export interface SaslFailure {
  reason: FailureReason;
  /** Bounded label, e.g. 'json_401', 'json_invalid_token', 'json_other'. */
  detail: FailureDetail;
}

const KNOWN_STATUS = new Set<string>([
  '400',
  '401',
  '403',
  '429',
  '500',
  '503',
  'invalid_token',
  'invalid_request',
  'insufficient_scope',
]);

/**
 * Decodes the error continuation (`+ <base64 JSON>`, Gmail and Dovecot shape) into a failure
 * reason. 401/invalid_token: the token is bad, a refresh may help. 400/403/insufficient_scope:
 * the token is fine but not for this mailbox, refreshing will not help. 429/5xx: try later.
 */
export function decodeFailureContinuation(b64: string): SaslFailure {
  let status = '';
  try {
    const json: unknown = JSON.parse(Buffer.from(b64.trim(), 'base64').toString('utf8'));
    if (json && typeof json === 'object' && 'status' in json) status = String(json.status).toLowerCase();
  } catch {
    return { reason: 'upstream_rejected', detail: 'json_unparsed' };
  }
  const detail: FailureDetail = KNOWN_STATUS.has(status) ? `json_${status}` : 'json_other';
  if (
    status === '400' ||
    status === '403' ||
    status === 'invalid_request' ||
    status === 'insufficient_scope'
  ) {
    return { reason: 'authorization_failed', detail };
  }
  if (status === '429' || status.startsWith('5')) return { reason: 'upstream_unavailable', detail };
  return { reason: 'upstream_rejected', detail };
}

/** Tagged NO / BYE text that means "later", not "never": RFC 5530 codes and provider wording. */
const TEMPORARY = /\[(UNAVAILABLE|INUSE|LIMIT)\]|too many|throttl|try again later|temporar|exceeded/i;

/** Classifies a tagged NO to AUTHENTICATE (Microsoft's immediate shape, or the end of a JSON exchange). */
export function classifyAuthNo(text: string, fromContinuation: SaslFailure | undefined): SaslFailure {
  if (TEMPORARY.test(text)) {
    return { reason: 'upstream_unavailable', detail: /throttl/i.test(text) ? 'throttled' : 'temporary' };
  }
  return fromContinuation ?? { reason: 'upstream_rejected', detail: 'no' };
}

/** Microsoft's reply when AUTHENTICATE succeeded but the mailbox is not reachable for this token. */
export function isNotConnected(text: string): boolean {
  return /authenticated but not connected/i.test(text);
}
