import { AsyncLocalStorage } from 'node:async_hooks';
import type { CustomFetch } from 'openid-client';

/** What the last token-endpoint HTTP exchange looked like, for classifying a failure. */
export interface HttpTrace {
  status?: number;
  retryAfter?: string | null;
  timedOut?: boolean;
}

const traces = new AsyncLocalStorage<HttpTrace>();

/** Runs `fn` and returns what its HTTP requests (through tracingFetch) saw. */
export async function withHttpTrace<T>(fn: () => Promise<T>): Promise<{ trace: HttpTrace; result: T }> {
  const trace: HttpTrace = {};
  const result = await traces.run(trace, fn).catch((err: unknown) => {
    throw new TracedError(trace, err);
  });
  return { trace, result };
}

/** A failure together with the HTTP facts seen before it. */
export class TracedError extends Error {
  override readonly name = 'TracedError';
  constructor(
    readonly trace: HttpTrace,
    cause: unknown,
  ) {
    super('token request failed', { cause });
  }
}

/** openid-client customFetch that records status, Retry-After and timeouts per call. */
export const tracingFetch: CustomFetch = async (url, options) => {
  const trace = traces.getStore();
  // Only the last request counts (discovery may have succeeded before the token call failed).
  if (trace) {
    trace.status = undefined;
    trace.retryAfter = undefined;
  }
  try {
    const res = await fetch(url, options);
    if (trace) {
      trace.status = res.status;
      trace.retryAfter = res.headers.get('retry-after');
    }
    return res;
  } catch (err) {
    if (trace && (err as Error | undefined)?.name === 'TimeoutError') trace.timedOut = true;
    throw err;
  }
};
