import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A fake Microsoft Graph mail API on 127.0.0.1:<random port>. It is a fake because no real Graph
 * endpoint is reachable from here: it implements only what SMTP-to-Graph delivery calls
 * (`/v1.0/users/{mailbox}/sendMail` with MIME, drafts, attachments, upload sessions, send), checks
 * bearer tokens by RFC 7662 introspection at the test OP (active, audience, mailbox), answers
 * errors in Graph's shape and sizes (4 MB requests, 320 KiB upload chunks), stores every message
 * it accepted, and fails or hangs on request. Each token is introspected once and the answer kept
 * until its `exp`, as Graph checks a token's signature and lifetime, not its revocation.
 */

/** Endpoint kinds, as the proxy's graph_requests_total labels them. */
export type GraphCall =
  | 'send_mail'
  | 'create_draft'
  | 'attach'
  | 'create_upload_session'
  | 'upload'
  | 'patch'
  | 'send_draft'
  | 'delete_draft';

export interface ReceivedAttachment {
  name: string;
  contentType: string;
  isInline: boolean;
  contentId?: string;
  /** The decoded bytes (contentBytes, or the reassembled upload session). */
  bytes: Buffer;
}

/** One message Graph accepted for sending. */
export interface ReceivedMessage {
  mailbox: string;
  path: 'sendMail' | 'draft';
  /** The MIME exactly as posted (base64-decoded); for drafts, as created (attachments apart). */
  mime: Buffer;
  /** Attachments added through the API (draft path only; sendMail's stay inside `mime`). */
  attachments: ReceivedAttachment[];
  /** PATCHed PR_DELETE_AFTER_SUBMIT (Boolean 0x0E01) = true: no Sent Items copy. */
  deleteAfterSubmit: boolean;
  /** Every singleValueExtendedProperty PATCHed onto the draft, in order. */
  extendedProperties: { id: string; value: string }[];
  at: number;
}

export interface GraphFailure {
  status: number;
  /** Graph error code; a per-status default when absent (403 → ErrorAccessDenied). */
  code?: string;
  message?: string;
  /** Seconds, sent as Retry-After. */
  retryAfter?: number;
  /** How many matching requests fail (default 1). */
  times?: number;
  /** Only requests of this kind (default: any). */
  call?: GraphCall;
  /** Never answer (the body is read first): for timeouts. `status` is then ignored. */
  hang?: boolean;
}

export interface GraphRequestRecord {
  call: GraphCall | 'unknown';
  method: string;
  /** Path without the query (upload URLs carry a secret in it). */
  path: string;
  /** 0 while hanging. */
  status: number;
  mailbox?: string;
  /** Request body length (bytes read, also when over the limit). */
  bytes: number;
  /** The Content-Range header of an upload PUT. */
  contentRange?: string;
  at: number;
}

export interface FakeGraphOptions {
  /** The OP's introspection endpoint and a client allowed to introspect the proxy's tokens. */
  introspect: { url: string; clientId: string; secret: string };
  /** The `aud` a token must carry (the resource indicator the OP issued it for). */
  audience: string;
  /**
   * Delegated scopes / app roles required (space-separated token scope or `roles`): `send` for
   * sendMail and send, `readWrite` for the draft calls; missing → 403 ErrorAccessDenied. Unset: no check.
   */
  requiredScopes?: { send?: string; readWrite?: string };
  /** Largest JSON/MIME request body (default 4,194,304, Graph's 4 MB). */
  maxRequestBytes?: number;
  /** Largest upload chunk (default 60 MiB). */
  maxChunkBytes?: number;
}

export interface FakeGraph {
  /** http://127.0.0.1:PORT — the graph_url (paths start with /v1.0). */
  url: string;
  /** Messages sent (sendMail accepted, or draft sent), in order. */
  received: ReceivedMessage[];
  /** Every request answered (or hanging), in order. */
  requests: GraphRequestRecord[];
  /** Requests of `call` (any when absent) answered with `status` (any when absent). */
  count(call?: GraphCall, status?: number): number;
  /** Drafts created and not sent yet. */
  drafts(): number;
  /** The next matching requests fail as told (rules are used in the order given). */
  failNext(failure: GraphFailure): void;
  /** Drops failure rules not used up. */
  clearFailures(): void;
  /** Introspection calls made (each token is introspected once, then cached). */
  introspections(): number;
  stop(): Promise<void>;
}

/** Graph's request size limit for JSON and MIME bodies. */
export const GRAPH_MAX_REQUEST_BYTES = 4_194_304;
/** Upload chunks must be a multiple of this, except the last. */
export const UPLOAD_CHUNK_UNIT = 327_680;
const MAX_CHUNK_BYTES = 60 * 1024 * 1024;
/** Outlook's largest attachment by upload session. */
const MAX_UPLOAD_SIZE = 150 * 1024 * 1024;

const DEFAULT_CODES: Record<number, string> = {
  400: 'ErrorInvalidRequest',
  401: 'InvalidAuthenticationToken',
  403: 'ErrorAccessDenied',
  404: 'ErrorItemNotFound',
  413: 'RequestBodyTooLarge',
  429: 'ApplicationThrottled',
  500: 'InternalServerError',
  503: 'ServiceNotAvailable',
  504: 'GatewayTimeout',
};

interface TokenInfo {
  active: boolean;
  aud?: string;
  exp?: number;
  sub: string;
  /** Lower-cased identities the token may act as (sub, username, email). */
  names: Set<string>;
  appOnly: boolean;
  /** Delegated scopes, or app roles for app-only tokens. */
  grants: Set<string>;
}

interface Draft {
  id: string;
  mailbox: string;
  mime: Buffer;
  attachments: ReceivedAttachment[];
  extendedProperties: { id: string; value: string }[];
}

interface UploadSession {
  id: string;
  secret: string;
  draft: Draft;
  item: Omit<ReceivedAttachment, 'bytes'>;
  size: number;
  next: number;
  chunks: Buffer[];
  expires: Date;
}

/** A Graph error answer, thrown inside handlers. */
class GraphError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const fail = (status: number, code: string, message: string, headers?: Record<string, string>) =>
  new GraphError(status, code, message, headers);

/** Strict base64 (line breaks allowed, nothing else): Buffer.from alone skips bad characters. */
function decodeBase64(text: string): Buffer | undefined {
  const s = text.replace(/\r?\n/g, '');
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return undefined;
  return Buffer.from(s, 'base64');
}

/** Addresses in the To, Cc and Bcc headers of a MIME message (simple: for test assertions). */
export function mimeRecipients(mime: Buffer | string): { to: string[]; cc: string[]; bcc: string[] } {
  const text = typeof mime === 'string' ? mime : mime.toString('latin1');
  const end = text.search(/\r?\n\r?\n/);
  const head = (end < 0 ? text : text.slice(0, end)).replace(/\r?\n[ \t]+/g, ' ');
  const out = { to: [] as string[], cc: [] as string[], bcc: [] as string[] };
  for (const line of head.split(/\r?\n/)) {
    const m = /^(to|cc|bcc)[ \t]*:(.*)$/i.exec(line);
    if (!m?.[1] || m[2] === undefined) continue;
    const list = out[m[1].toLowerCase() as 'to' | 'cc' | 'bcc'];
    // Drop quoted display names (they may hold commas), then split the address list.
    for (const part of m[2].replace(/"(?:[^"\\]|\\.)*"/g, '').split(',')) {
      const addr = /<([^>]*)>/.exec(part)?.[1] ?? part.replace(/\(.*?\)/g, '');
      const a = addr.trim();
      if (a.includes('@')) list.push(a);
    }
  }
  return out;
}

/** Reads a body up to `limit` bytes; beyond it the rest is drained and `undefined` returned. */
async function readBody(
  req: IncomingMessage,
  limit: number,
  record: { bytes: number },
): Promise<Buffer | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    record.bytes = size;
    if (size > limit) over = true;
    if (!over) chunks.push(chunk);
  }
  return over ? undefined : Buffer.concat(chunks, size);
}

function parseJson(body: Buffer): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(body.toString('utf8'));
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // Answered below, as Graph does.
  }
  throw fail(400, 'UnableToDeserializePostBody', 'Unable to deserialize the request body.');
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

interface Route {
  call: GraphCall;
  mailbox?: string;
  id?: string;
}

/** Maps method + path to an endpoint kind; undefined for anything this fake does not serve. */
function route(method: string, path: string): Route | undefined {
  const up = /^\/upload\/([A-Za-z0-9_-]+)$/.exec(path);
  if (up?.[1]) return method === 'PUT' ? { call: 'upload', id: up[1] } : undefined;
  const m = /^\/v1\.0\/(?:users\/([^/]+)|(me))\/(.+)$/.exec(path);
  if (!m?.[3]) return undefined;
  let mailbox: string;
  try {
    mailbox = m[2] ?? decodeURIComponent(m[1] ?? '');
  } catch {
    return undefined;
  }
  const rest = m[3];
  const msg = /^messages\/([A-Za-z0-9_-]+)(?:\/(.+))?$/.exec(rest);
  if (method === 'POST' && rest === 'sendMail') return { call: 'send_mail', mailbox };
  if (method === 'POST' && rest === 'messages') return { call: 'create_draft', mailbox };
  if (!msg?.[1]) return undefined;
  const id = msg[1];
  const sub = msg[2];
  if (method === 'PATCH' && sub === undefined) return { call: 'patch', mailbox, id };
  if (method === 'DELETE' && sub === undefined) return { call: 'delete_draft', mailbox, id };
  if (method !== 'POST') return undefined;
  if (sub === 'attachments') return { call: 'attach', mailbox, id };
  if (sub === 'attachments/createUploadSession') return { call: 'create_upload_session', mailbox, id };
  if (sub === 'send') return { call: 'send_draft', mailbox, id };
  return undefined;
}

const DRAFT_CALLS = new Set<GraphCall>([
  'create_draft',
  'patch',
  'attach',
  'create_upload_session',
  'delete_draft',
]);

export async function startFakeGraph(opts: FakeGraphOptions): Promise<FakeGraph> {
  const maxRequest = opts.maxRequestBytes ?? GRAPH_MAX_REQUEST_BYTES;
  const maxChunk = opts.maxChunkBytes ?? MAX_CHUNK_BYTES;
  const received: ReceivedMessage[] = [];
  const requests: GraphRequestRecord[] = [];
  const failures: GraphFailure[] = [];
  const drafts = new Map<string, Draft>();
  const sessions = new Map<string, UploadSession>();
  /** Introspection results by the token's SHA-256, so the fake keeps no token. */
  const tokenCache = new Map<string, Promise<TokenInfo>>();
  let introspections = 0;

  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  async function introspect(token: string): Promise<TokenInfo> {
    introspections++;
    const { clientId, secret } = opts.introspect;
    const res = await fetch(opts.introspect.url, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({ token }),
      signal: AbortSignal.timeout(5000),
    });
    if (!res.ok) throw new Error(`introspection answered ${res.status}`);
    const j = (await res.json()) as Record<string, unknown>;
    const names = new Set(
      [j.sub, j.username, j.email]
        .filter((v): v is string => typeof v === 'string')
        .map((v) => v.toLowerCase()),
    );
    const appOnly = j.idtyp === 'app';
    const grants = appOnly
      ? (Array.isArray(j.roles) ? j.roles : []).filter((r): r is string => typeof r === 'string')
      : (str(j.scope) ?? '').split(' ').filter(Boolean);
    return {
      active: j.active === true,
      sub: str(j.sub) ?? '',
      ...(typeof j.aud === 'string' ? { aud: j.aud } : {}),
      ...(typeof j.exp === 'number' ? { exp: j.exp } : {}),
      names,
      appOnly,
      grants: new Set(grants.map((g) => g.toLowerCase())),
    };
  }

  /** Checks the bearer token for `r`; throws the 401/403 Graph would answer; returns the mailbox. */
  async function authorize(req: IncomingMessage, r: Route): Promise<string> {
    const h = req.headers.authorization ?? '';
    const token = /^Bearer +(\S+)$/i.exec(h)?.[1];
    const challenge = { 'www-authenticate': 'Bearer realm="", error="invalid_token"' };
    if (!token) throw fail(401, 'InvalidAuthenticationToken', 'Access token is empty.', challenge);
    const key = createHash('sha256').update(token).digest('hex');
    let pending = tokenCache.get(key);
    if (!pending) {
      pending = introspect(token);
      tokenCache.set(key, pending);
      // An unreachable OP is not an answer about the token: ask again next time.
      pending.catch(() => tokenCache.delete(key));
    }
    let info: TokenInfo;
    try {
      info = await pending;
    } catch {
      throw fail(503, 'ServiceNotAvailable', 'Token validation is unavailable.');
    }
    if (!info.active || (info.exp !== undefined && info.exp * 1000 <= Date.now())) {
      throw fail(
        401,
        'InvalidAuthenticationToken',
        'Lifetime validation failed, the token is expired.',
        challenge,
      );
    }
    if (info.aud !== opts.audience) {
      throw fail(401, 'InvalidAuthenticationToken', 'Invalid audience.', challenge);
    }
    const mailbox = (r.mailbox ?? '').toLowerCase();
    if (mailbox === 'me' && info.appOnly) {
      throw fail(400, 'BadRequest', '/me request is only valid with delegated authentication flow.');
    }
    if (!info.appOnly && mailbox !== 'me' && !info.names.has(mailbox)) {
      throw fail(403, 'ErrorAccessDenied', 'Access is denied. Check credentials and try again.');
    }
    const need = DRAFT_CALLS.has(r.call) ? opts.requiredScopes?.readWrite : opts.requiredScopes?.send;
    if (need && !info.grants.has(need.toLowerCase())) {
      throw fail(403, 'ErrorAccessDenied', 'Access is denied. Check credentials and try again.');
    }
    return mailbox === 'me' ? info.sub : (r.mailbox ?? '');
  }

  function takeFailure(call: GraphCall): GraphFailure | undefined {
    const i = failures.findIndex((f) => f.call === undefined || f.call === call);
    const f = failures[i];
    if (!f) return undefined;
    const left = (f.times ?? 1) - 1;
    if (left <= 0) failures.splice(i, 1);
    else f.times = left;
    return f;
  }

  function draftFor(r: Route, mailbox: string): Draft {
    const d = r.id === undefined ? undefined : drafts.get(r.id);
    // Another mailbox's draft is as invisible as a missing one.
    if (!d || d.mailbox.toLowerCase() !== mailbox.toLowerCase()) {
      throw fail(404, 'ErrorItemNotFound', 'The specified object was not found in the store.');
    }
    return d;
  }

  /** A text/plain base64 MIME body (sendMail and draft creation). */
  function mimeBody(req: IncomingMessage, body: Buffer): Buffer {
    const type = (req.headers['content-type'] ?? '').toLowerCase();
    if (!type.startsWith('text/plain')) {
      throw fail(
        400,
        'ErrorInvalidRequest',
        'This fake Graph accepts only MIME (Content-Type: text/plain, base64).',
      );
    }
    const mime = decodeBase64(body.toString('latin1'));
    if (!mime)
      throw fail(400, 'ErrorMimeContentInvalidBase64String', 'Invalid base64 string for MIME content.');
    if (mime.length === 0) throw fail(400, 'ErrorMimeContentInvalid', 'The MIME content is empty.');
    return mime;
  }

  function handle(
    req: IncomingMessage,
    res: ServerResponse,
    r: Route,
    mailbox: string,
    body: Buffer,
  ): number {
    const reply = (status: number, json?: unknown, headers: Record<string, string> = {}) => {
      const payload = json === undefined ? '' : JSON.stringify(json);
      res.writeHead(status, {
        ...(json === undefined ? {} : { 'content-type': 'application/json' }),
        'content-length': String(Buffer.byteLength(payload)),
        'request-id': randomUUID(),
        ...headers,
      });
      res.end(payload);
      return status;
    };
    switch (r.call) {
      case 'send_mail': {
        const mime = mimeBody(req, body);
        const rc = mimeRecipients(mime);
        if (rc.to.length + rc.cc.length + rc.bcc.length === 0) {
          throw fail(400, 'ErrorInvalidRecipients', 'At least one recipient is not valid.');
        }
        received.push({
          mailbox,
          path: 'sendMail',
          mime,
          attachments: [],
          deleteAfterSubmit: false,
          extendedProperties: [],
          at: Date.now(),
        });
        return reply(202);
      }
      case 'create_draft': {
        const mime = mimeBody(req, body);
        const d: Draft = {
          id: randomBytes(12).toString('base64url'),
          mailbox,
          mime,
          attachments: [],
          extendedProperties: [],
        };
        drafts.set(d.id, d);
        return reply(201, { id: d.id, isDraft: true });
      }
      case 'patch': {
        const d = draftFor(r, mailbox);
        const j = parseJson(body);
        const props = j.singleValueExtendedProperties;
        if (props !== undefined) {
          if (!Array.isArray(props))
            throw fail(400, 'ErrorInvalidRequest', 'singleValueExtendedProperties must be an array.');
          for (const p of props as unknown[]) {
            const o = (p ?? {}) as Record<string, unknown>;
            const id = str(o.id);
            const value = str(o.value);
            if (id === undefined || value === undefined) {
              throw fail(400, 'ErrorInvalidProperty', 'An extended property needs a string id and value.');
            }
            d.extendedProperties.push({ id, value });
          }
        }
        return reply(200, { id: d.id, isDraft: true });
      }
      case 'attach': {
        const d = draftFor(r, mailbox);
        const j = parseJson(body);
        if (j['@odata.type'] !== '#microsoft.graph.fileAttachment') {
          throw fail(400, 'ErrorInvalidRequest', 'This fake Graph accepts only fileAttachment.');
        }
        const name = str(j.name);
        const bytes = decodeBase64(str(j.contentBytes) ?? '');
        if (name === undefined || !bytes) {
          throw fail(400, 'ErrorInvalidRequest', 'A file attachment needs a name and base64 contentBytes.');
        }
        d.attachments.push({ ...attachmentItem(j, name), bytes });
        return reply(201, { id: randomBytes(9).toString('base64url'), name, size: bytes.length });
      }
      case 'create_upload_session': {
        const d = draftFor(r, mailbox);
        const item = parseJson(body).AttachmentItem as Record<string, unknown> | undefined;
        const name = str(item?.name);
        const size = item?.size;
        if (item?.attachmentType !== 'file' || name === undefined) {
          throw fail(400, 'ErrorInvalidRequest', 'AttachmentItem needs attachmentType "file" and a name.');
        }
        if (typeof size !== 'number' || !Number.isInteger(size) || size <= 0) {
          throw fail(400, 'ErrorInvalidRequest', 'AttachmentItem needs a positive integer size.');
        }
        if (size > MAX_UPLOAD_SIZE) {
          throw fail(400, 'ErrorAttachmentSizeLimitExceeded', 'The attachment is larger than 150 MB.');
        }
        const s: UploadSession = {
          id: randomBytes(12).toString('base64url'),
          secret: randomBytes(24).toString('base64url'),
          draft: d,
          item: attachmentItem(item, name),
          size,
          next: 0,
          chunks: [],
          expires: new Date(Date.now() + 6 * 3600_000),
        };
        sessions.set(s.id, s);
        return reply(201, {
          uploadUrl: `${url}/upload/${s.id}?authtoken=${s.secret}`,
          expirationDateTime: s.expires.toISOString(),
          nextExpectedRanges: ['0-'],
        });
      }
      case 'upload':
        return upload(req, r, body, reply);
      case 'delete_draft': {
        // A sender cleaning up after a failure: the draft and its upload sessions go.
        const d = draftFor(r, mailbox);
        drafts.delete(d.id);
        for (const [id, s] of sessions) if (s.draft === d) sessions.delete(id);
        return reply(204);
      }
      case 'send_draft': {
        const d = draftFor(r, mailbox);
        drafts.delete(d.id);
        for (const [id, s] of sessions) if (s.draft === d) sessions.delete(id);
        received.push({
          mailbox: d.mailbox,
          path: 'draft',
          mime: d.mime,
          attachments: d.attachments,
          deleteAfterSubmit: d.extendedProperties.some(
            (p) => p.id.toLowerCase() === 'boolean 0x0e01' && p.value.toLowerCase() === 'true',
          ),
          extendedProperties: d.extendedProperties,
          at: Date.now(),
        });
        return reply(202);
      }
    }
  }

  function attachmentItem(j: Record<string, unknown>, name: string): Omit<ReceivedAttachment, 'bytes'> {
    const contentId = str(j.contentId);
    return {
      name,
      contentType: str(j.contentType) ?? 'application/octet-stream',
      isInline: j.isInline === true,
      ...(contentId === undefined ? {} : { contentId }),
    };
  }

  /** One PUT to an upload URL: in-order ranges, 320 KiB multiples except the last, ≤ maxChunk. */
  function upload(
    req: IncomingMessage,
    r: Route,
    body: Buffer,
    reply: (status: number, json?: unknown, headers?: Record<string, string>) => number,
  ): number {
    const s = r.id === undefined ? undefined : sessions.get(r.id);
    const secret = new URL(req.url ?? '/', url).searchParams.get('authtoken');
    if (!s || secret !== s.secret) throw fail(404, 'ErrorItemNotFound', 'The upload session was not found.');
    // Graph refuses upload URLs called with a bearer token (the URL is its own credential).
    if (req.headers.authorization !== undefined) {
      throw fail(401, 'InvalidAuthenticationToken', 'Do not send an Authorization header to an upload URL.');
    }
    const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(req.headers['content-range'] ?? '');
    if (!m) throw fail(400, 'InvalidContentRange', 'Content-Range must be "bytes first-last/total".');
    const [first, last, total] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (total !== s.size)
      throw fail(400, 'InvalidContentRange', `The total must be the session size ${s.size}.`);
    if (first !== s.next || last < first || last >= total) {
      throw fail(416, 'InvalidRange', `Expected a range starting at ${s.next}.`);
    }
    if (body.length !== last - first + 1) {
      throw fail(400, 'InvalidContentRange', 'The body length does not match Content-Range.');
    }
    const final = last + 1 === total;
    if (!final && body.length % UPLOAD_CHUNK_UNIT !== 0) {
      throw fail(
        400,
        'InvalidContentRange',
        `Upload chunks must be a multiple of ${UPLOAD_CHUNK_UNIT} bytes.`,
      );
    }
    s.chunks.push(body);
    s.next = last + 1;
    if (!final) {
      return reply(200, { expirationDateTime: s.expires.toISOString(), nextExpectedRanges: [`${s.next}-`] });
    }
    sessions.delete(s.id);
    s.draft.attachments.push({ ...s.item, bytes: Buffer.concat(s.chunks, total) });
    return reply(201, undefined, { location: `${url}/v1.0/attachments/${s.id}` });
  }

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', url).pathname;
    const r = route(method, path);
    const record: GraphRequestRecord = {
      call: r?.call ?? 'unknown',
      method,
      path,
      status: 0,
      bytes: 0,
      at: Date.now(),
    };
    if (r?.mailbox !== undefined) record.mailbox = r.mailbox;
    const range = req.headers['content-range'];
    if (r?.call === 'upload' && range !== undefined) record.contentRange = range;
    requests.push(record);
    const answerError = (e: GraphError) => {
      const payload = JSON.stringify({
        error: {
          code: e.code,
          message: e.message,
          innerError: { date: new Date().toISOString(), 'request-id': randomUUID() },
        },
      });
      res.writeHead(e.status, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(payload)),
        ...e.headers,
      });
      res.end(payload);
      record.status = e.status;
    };
    void (async () => {
      try {
        const body = await readBody(req, r?.call === 'upload' ? maxChunk : maxRequest, record);
        if (!r) throw fail(404, 'ResourceNotFound', `Resource not found for ${method} ${path}.`);
        if (!body && r.call === 'upload')
          throw fail(413, 'RequestBodyTooLarge', `Upload chunks are at most ${maxChunk} bytes.`);
        if (!body) throw fail(413, 'RequestBodyTooLarge', 'The maximum request length supported is 4MB.');
        const mailbox = r.call === 'upload' ? '' : await authorize(req, r);
        const f = takeFailure(r.call);
        if (f?.hang) return; // The socket stays open until the client gives up or stop().
        if (f) {
          const headers: Record<string, string> =
            f.retryAfter === undefined ? {} : { 'retry-after': String(f.retryAfter) };
          throw fail(
            f.status,
            f.code ?? DEFAULT_CODES[f.status] ?? 'UnknownError',
            f.message ?? `Injected ${f.status}.`,
            headers,
          );
        }
        record.status = handle(req, res, r, mailbox, body);
      } catch (e) {
        if (e instanceof GraphError) answerError(e);
        else answerError(fail(500, 'InternalServerError', e instanceof Error ? e.message : String(e)));
      }
    })();
  });

  return {
    url,
    received,
    requests,
    count: (call, status) =>
      requests.filter(
        (q) => (call === undefined || q.call === call) && (status === undefined || q.status === status),
      ).length,
    drafts: () => drafts.size,
    failNext: (f) => {
      if (!f.hang && !(f.status >= 400 && f.status <= 599))
        throw new Error(`fake Graph: status ${f.status} is not an error`);
      failures.push({ ...f });
    },
    clearFailures: () => {
      failures.length = 0;
    },
    introspections: () => introspections,
    stop: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
