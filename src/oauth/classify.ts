import { TracedError } from './http-trace.js';

/** Bounded result labels of a token-endpoint request (metric `result`). */
export type RefreshResult =
  | 'success'
  | 'invalid_grant'
  | 'unavailable'
  | 'timeout'
  | 'http_5xx'
  | 'http_429'
  | 'invalid_response'
  | 'invalid_scope';

export interface RefreshFailure {
  result: Exclude<RefreshResult, 'success'>;
  /** Server-requested wait (Retry-After), in milliseconds. */
  retryAfterMs?: number;
  /** For logs and `last_error`: never a token. */
  message: string;
}

/** Turns whatever a grant request threw into one of the bounded failure kinds. */
export function classifyTokenError(
  err: unknown,
  now = Date.now(),
  opts: { secondResource?: boolean } = {},
): RefreshFailure {
  const trace = err instanceof TracedError ? err.trace : {};
  const cause = err instanceof TracedError ? err.cause : err;
  const oauthError = findField(cause, 'error');
  const status = trace.status;
  // A grant asked for a second resource (Graph) it was never consented for: the grant itself is fine.
  if (
    opts.secondResource &&
    (oauthError === 'invalid_scope' ||
      oauthError === 'invalid_target' ||
      (oauthError === 'invalid_grant' && /AADSTS65001\b/.test(findField(cause, 'error_description') ?? '')))
  ) {
    return {
      result: 'invalid_scope',
      message: `scope not granted for this resource (HTTP ${status ?? '?'})`,
    };
  }
  if (oauthError === 'invalid_grant') {
    return { result: 'invalid_grant', message: `invalid_grant (HTTP ${status ?? '?'})` };
  }
  if (trace.timedOut || hasName(cause, 'TimeoutError')) {
    return { result: 'timeout', message: 'token endpoint timed out' };
  }
  if (status === undefined) {
    return { result: 'unavailable', message: `token endpoint unreachable: ${describe(cause)}` };
  }
  if (status === 429) {
    return {
      result: 'http_429',
      retryAfterMs: parseRetryAfter(trace.retryAfter, now),
      message: 'token endpoint throttled (HTTP 429)',
    };
  }
  if (status >= 500) {
    return {
      result: 'http_5xx',
      retryAfterMs: parseRetryAfter(trace.retryAfter, now),
      message: `token endpoint failed (HTTP ${status})`,
    };
  }
  if (status >= 200 && status < 300) {
    return { result: 'invalid_response', message: `unusable token response: ${describe(cause)}` };
  }
  // Other 4xx (invalid_client, unauthorized_client…): configuration trouble, not the user's grant.
  return {
    result: 'unavailable',
    message: `token endpoint refused (HTTP ${status}${oauthError ? ` ${oauthError}` : ''})`,
  };
}

/** Retry-After as delta-seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** The first string `field` on the error or its causes (openid-client puts OAuth errors there). */
function findField(err: unknown, field: 'error' | 'error_description'): string | undefined {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const v = (e as Record<string, unknown>)[field];
    if (typeof v === 'string') return v;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function hasName(err: unknown, name: string): boolean {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    if ((e as Error).name === name) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** Error text (bounded) without any request data. */
function describe(err: unknown): string {
  const msgs: string[] = [];
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 3; depth++) {
    const m = (e as Error).message;
    if (typeof m === 'string' && m) msgs.push(m);
    e = (e as { cause?: unknown }).cause;
  }
  return msgs.join(': ').slice(0, 200) || 'unknown error';
}
