/** Microsoft Graph HTTP calls of one delivery: bounded in time, counted, tokens never logged. */
import type { Metrics } from '../../../metrics.js';
import { parseRetryAfter } from '../../../oauth/classify.js';
import type { ByteSource } from './decode.js';

/** Bounded `call` label of graph_requests_total. */
export type GraphCall =
  | 'send_mail'
  | 'create_draft'
  | 'patch'
  | 'attach'
  | 'create_upload_session'
  | 'upload'
  | 'send_draft'
  | 'delete_draft';

/** Upload session chunks must be multiples of 320 KiB; ten of them stay under Graph's 4 MiB cap. */
export const UPLOAD_CHUNK_BYTES = 10 * 327_680;

/** Longest error body read: Graph's are a few hundred bytes. */
const MAX_ERROR_BODY = 65_536;

export type GraphFailureKind = 'http' | 'timeout' | 'network' | 'aborted';

/** A Graph call that did not succeed. The message never holds a token or message content. */
export class GraphError extends Error {
  override readonly name = 'GraphError';
  readonly kind: GraphFailureKind;
  readonly call: GraphCall;
  readonly status: number | undefined;
  /** Graph's `error.code`, e.g. ErrorAccessDenied. */
  readonly code: string | undefined;
  /** Graph's `error.message`, control characters stripped, at most 200 characters. */
  readonly graphMessage: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(
    kind: GraphFailureKind,
    call: GraphCall,
    opts: {
      status?: number;
      code?: string;
      graphMessage?: string;
      retryAfterMs?: number;
      cause?: unknown;
      /** What went wrong, in our own words (never request data). */
      detail?: string;
    } = {},
  ) {
    const why = opts.detail ?? (opts.cause === undefined ? undefined : causeCode(opts.cause));
    super(
      kind === 'http'
        ? `Graph ${call}: HTTP ${opts.status}${opts.code ? ` ${opts.code}` : ''}`
        : `Graph ${call}: ${kind}${why === undefined ? '' : ` (${why})`}`,
      opts.cause === undefined ? undefined : { cause: opts.cause },
    );
    this.kind = kind;
    this.call = call;
    this.status = opts.status;
    this.code = opts.code;
    this.graphMessage = opts.graphMessage;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

export interface GraphRequest {
  readonly call: GraphCall;
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  readonly url: string;
  /** Bearer token; absent for upload URLs, which carry their own authorization. */
  readonly token?: string;
  readonly body?: Uint8Array | string;
  readonly contentType?: string;
  readonly headers?: Record<string, string>;
  /** Overrides the caller's signal (a clean-up call must run after the caller gave up). */
  readonly signal?: AbortSignal;
}

export interface GraphResponse {
  readonly status: number;
  /** The parsed JSON body, or undefined when there was none. */
  readonly json: unknown;
}

export interface GraphClientOptions {
  readonly provider: string;
  readonly timeoutMs: number;
  readonly fetch: typeof fetch;
  readonly metrics?: Metrics | undefined;
  /** Aborts every request (the SMTP client went away). */
  readonly signal: AbortSignal;
}

export class GraphClient {
  constructor(private readonly o: GraphClientOptions) {}

  /** One request; resolves for 2xx, else throws GraphError. Never waits past timeoutMs. */
  async request(req: GraphRequest): Promise<GraphResponse> {
    const caller = req.signal ?? this.o.signal;
    if (caller.aborted) throw new GraphError('aborted', req.call);
    const timeout = AbortSignal.timeout(this.o.timeoutMs);
    const headers: Record<string, string> = { ...req.headers };
    if (req.token !== undefined) headers.authorization = `Bearer ${req.token}`;
    if (req.contentType !== undefined) headers['content-type'] = req.contentType;
    let res: Response;
    try {
      res = await this.o.fetch(req.url, {
        method: req.method,
        headers,
        ...(req.body === undefined ? {} : { body: req.body }),
        // An upload URL or a redirect must never receive the bearer token elsewhere.
        redirect: 'manual',
        signal: AbortSignal.any([caller, timeout]),
      });
    } catch (err) {
      const kind: GraphFailureKind = timeout.aborted ? 'timeout' : caller.aborted ? 'aborted' : 'network';
      if (kind !== 'aborted') this.#count(req.call, kind);
      throw new GraphError(kind, req.call, { cause: err });
    }
    const status = res.status;
    const retryAfter = res.headers.get('retry-after');
    this.#count(req.call, String(status));
    // The status decides: a 202 whose (empty) body stalls was still accepted, and must not be sent again.
    const text = await readCapped(res, MAX_ERROR_BODY).catch(() => '');
    const json = parseJson(text);
    if (status >= 200 && status < 300) return { status, json };
    const error = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    const retryAfterMs = parseRetryAfter(retryAfter);
    throw new GraphError('http', req.call, {
      status,
      ...(typeof error?.code === 'string' ? { code: clean(error.code, 80) } : {}),
      ...(typeof error?.message === 'string' ? { graphMessage: clean(error.message, 200) } : {}),
      ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
    });
  }

  /**
   * Uploads `content` to an upload session URL in UPLOAD_CHUNK_BYTES pieces (no Authorization
   * header: the URL is its own credential). A chunk is retried once after a network error or a
   * 5xx; the server's nextExpectedRanges decides where the next chunk starts.
   */
  async upload(uploadUrl: string, content: ByteSource): Promise<void> {
    const total = content.size;
    let offset = 0;
    let stalls = 0;
    while (offset < total) {
      const chunk = content.read(offset, UPLOAD_CHUNK_BYTES);
      if (chunk.length === 0) throw new GraphError('network', 'upload', { detail: 'content ended early' });
      const req: GraphRequest = {
        call: 'upload',
        method: 'PUT',
        url: uploadUrl,
        body: chunk,
        contentType: 'application/octet-stream',
        headers: { 'content-range': `bytes ${offset}-${offset + chunk.length - 1}/${total}` },
      };
      let res: GraphResponse;
      try {
        res = await this.request(req);
      } catch (err) {
        if (!(err instanceof GraphError) || !retryable(err)) throw err;
        res = await this.request(req);
      }
      const next = nextExpected(res.json);
      if (res.status === 201 || (next === undefined && offset + chunk.length >= total)) return;
      const want = next ?? offset + chunk.length;
      // A server that keeps asking for bytes it already has would loop forever.
      stalls = want <= offset ? stalls + 1 : 0;
      if (stalls > 2 || want >= total) {
        throw new GraphError('network', 'upload', {
          detail: `upload session stuck at byte ${want}`,
        });
      }
      offset = want;
    }
  }

  #count(call: GraphCall, status: string): void {
    this.o.metrics?.graphRequests.inc({ provider: this.o.provider, call, status });
  }
}

function retryable(err: GraphError): boolean {
  return err.kind === 'network' || (err.kind === 'http' && (err.status ?? 0) >= 500);
}

/** Start of the first of `nextExpectedRanges` (`["3276800-"]`), if any. */
function nextExpected(json: unknown): number | undefined {
  const ranges = (json as { nextExpectedRanges?: unknown } | undefined)?.nextExpectedRanges;
  if (!Array.isArray(ranges) || typeof ranges[0] !== 'string') return undefined;
  const m = /^(\d+)-/.exec(ranges[0]);
  return m ? Number(m[1]) : undefined;
}

async function readCapped(res: Response, max: number): Promise<string> {
  if (!res.body) return '';
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body) {
    const b = Buffer.from(c as Uint8Array);
    if (n + b.length > max) {
      // Leaving the loop cancels the rest of the body.
      chunks.push(b.subarray(0, max - n));
      break;
    }
    chunks.push(b);
    n += b.length;
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseJson(text: string): unknown {
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** Graph's words, safe to quote to an SMTP client: one line, bounded. */
export function clean(s: string, max: number): string {
  const t = s.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return t.length > max ? `${t.slice(0, max - 1)}…` : t;
}

function causeCode(err: unknown): string {
  if (!(err instanceof Error)) return 'error';
  const code = (err.cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : err.name;
}
