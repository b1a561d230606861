/**
 * Hands one SMTP message to Microsoft Graph: sendMail when it fits one request, else a draft
 * with its attachments uploaded apart, then send. Every outcome becomes one SMTP reply.
 */
import { isProxyError } from '../../../errors.js';
import type { Logger } from '../../../log.js';
import type { Metrics } from '../../../metrics.js';
import type { Envelope, TransactionReply } from '../transaction.js';
import { clean, GraphClient, GraphError, type GraphRequest, type GraphResponse } from './client.js';
import { base64Length, base64Of } from './decode.js';
import {
  type MimeAttachment,
  type ParsedMessage,
  parseMessage,
  rewriteRecipients,
  stripAttachments,
} from './mime.js';

export interface GraphTarget {
  /** Metric label. */
  readonly provider: string;
  /** graph_url, e.g. https://graph.microsoft.com */
  readonly baseUrl: string;
  /** User principal name / address: /v1.0/users/{mailbox}/... */
  readonly mailbox: string;
  readonly saveToSentItems: boolean;
  /** Per Graph request. */
  readonly timeoutMs: number;
}

/** Gets a Graph access token; `force` after a 401 (one retry with a fresh token). */
export type GraphTokenSource = (force: boolean) => Promise<string>;

/** Graph's request body limit (about 4 MB): the base64 MIME of sendMail or a draft must fit. */
export const MAX_REQUEST_BASE64 = 4_000_000;
/** Attachments from this size on go through an upload session (Graph: "3 MB"; base64 stays under 4 MB). */
export const UPLOAD_SESSION_FROM = 3_000_000;

/** graph_deliveries_total `result` label. */
export type DeliveryResult =
  | 'delivered'
  | 'throttled'
  | 'unavailable'
  | 'bad_message'
  | 'access_denied'
  | 'too_large'
  | 'timeout'
  | 'token_unavailable'
  | 'needs_consent'
  | 'recipient_mismatch'
  | 'aborted';

interface Outcome {
  readonly result: DeliveryResult;
  readonly reply: TransactionReply;
}

/** A refusal decided here, before or without Graph. */
class Refusal extends Error {
  constructor(readonly outcome: Outcome) {
    super(outcome.reply.text);
  }
}

/** The token source failed (its error is the cause). */
class TokenFailure extends Error {}

/** Graph refused a freshly fetched token too. */
class Unauthorized extends Error {}

const ACCEPTED: TransactionReply = { code: 250, enhanced: '2.0.0', text: 'Accepted by Microsoft Graph' };

export class GraphDeliverer {
  readonly #fetch: typeof fetch;

  constructor(private readonly deps: { metrics?: Metrics | undefined; log: Logger; fetch?: typeof fetch }) {
    this.#fetch = deps.fetch ?? fetch;
  }

  /** Never rejects: maps every outcome to the SMTP reply and counts it. */
  async deliver(
    target: GraphTarget,
    tokens: GraphTokenSource,
    envelope: Envelope,
    message: Buffer[],
    size: number,
    signal: AbortSignal,
  ): Promise<TransactionReply> {
    const started = performance.now();
    const client = new GraphClient({
      provider: target.provider,
      timeoutMs: target.timeoutMs,
      fetch: this.#fetch,
      metrics: this.deps.metrics,
      signal,
    });
    const run = new Delivery(target, tokens, client, this.deps.log);
    let outcome: Outcome;
    try {
      await run.run(envelope, message);
      outcome = { result: 'delivered', reply: ACCEPTED };
    } catch (err) {
      outcome = mapFailure(err, run.draftPath);
      const g = err instanceof GraphError ? err : undefined;
      this.deps.log.warn(
        {
          provider: target.provider,
          result: outcome.result,
          path: run.draftPath ? 'draft' : 'send_mail',
          bytes: size,
          ...(g ? { call: g.call, status: g.status ?? g.kind, code: g.code } : {}),
          // Our own messages only: a foreign error could carry an upload URL, a refusal an address.
          why: err instanceof GraphError || err instanceof Unauthorized ? err.message : undefined,
          ...(err instanceof TokenFailure && isProxyError(err.cause)
            ? { tokenReason: err.cause.reason, tokenDetail: err.cause.detail }
            : {}),
        },
        'Graph delivery failed',
      );
    }
    const { metrics } = this.deps;
    metrics?.graphDeliveries.inc({ provider: target.provider, result: outcome.result });
    if (outcome.result === 'delivered') {
      const seconds = (performance.now() - started) / 1000;
      metrics?.graphDeliveryBytes.inc({ provider: target.provider }, size);
      metrics?.graphDeliverySeconds.observe({ provider: target.provider }, seconds);
      this.deps.log.info(
        {
          provider: target.provider,
          path: run.draftPath ? 'draft' : 'send_mail',
          bytes: size,
          recipients: envelope.recipients.length,
          attachments: run.uploaded,
          ms: Math.round(seconds * 1000),
        },
        'message accepted by Microsoft Graph',
      );
    }
    return outcome.reply;
  }
}

/** One message's way through Graph, with its token and draft. */
class Delivery {
  /** Whether the draft path was taken (its 403 needs Mail.ReadWrite too). */
  draftPath = false;
  /** Attachments sent apart from the MIME. */
  uploaded = 0;
  #token: string | undefined;
  #refreshed = false;
  readonly #base: string;

  constructor(
    private readonly target: GraphTarget,
    private readonly tokens: GraphTokenSource,
    private readonly client: GraphClient,
    private readonly log: Logger,
  ) {
    const mailbox = encodeURIComponent(target.mailbox).replace(/%40/g, '@');
    this.#base = `${target.baseUrl.replace(/\/+$/, '')}/v1.0/users/${mailbox}`;
  }

  async run(envelope: Envelope, message: Buffer[]): Promise<void> {
    const total = message.reduce((n, b) => n + b.length, 0);
    // One chunk is used as it is; several are joined once (the MIME tree needs one buffer) and
    // let go at once: the session handed them over, so the message is not held twice.
    const buf = message.length === 1 ? message[0]! : Buffer.concat(message, total);
    message.length = 0;
    const parsed = parseMessage(buf);
    const rw = rewriteRecipients(parsed, envelope);
    if (!rw.ok) {
      throw new Refusal({
        result: 'recipient_mismatch',
        reply: { code: 554, enhanced: '5.7.1', text: rw.reason },
      });
    }
    const full = [rw.header, buf.subarray(parsed.root.header.headerEnd)];
    const fits = base64Length(rw.header.length + full[1]!.length) <= MAX_REQUEST_BASE64;
    if (this.target.saveToSentItems && fits) {
      try {
        await this.#authed({
          call: 'send_mail',
          method: 'POST',
          url: `${this.#base}/sendMail`,
          body: base64Of(full),
          contentType: 'text/plain',
        });
        return;
      } catch (err) {
        // Graph measured it larger than we did: the upload path may still carry it.
        if (!(err instanceof GraphError && err.status === 413)) throw err;
        this.log.info({ provider: this.target.provider }, 'sendMail answered 413: sending through a draft');
      }
    }
    // After a 413 from sendMail the MIME is sent without its attachments.
    await this.#viaDraft(parsed, rw.header, fits && !this.target.saveToSentItems ? full : undefined);
  }

  /** Draft path: `whole` is the MIME to send as it is, else attachments go apart. */
  async #viaDraft(parsed: ParsedMessage, header: Buffer, whole: Buffer[] | undefined): Promise<void> {
    this.draftPath = true;
    let mime: Buffer[];
    let attachments: MimeAttachment[] = [];
    if (whole) {
      mime = whole;
    } else {
      const stripped = stripAttachments(parsed);
      mime = [header, ...stripped.body];
      attachments = stripped.attachments;
      const len = mime.reduce((n, b) => n + b.length, 0);
      if (base64Length(len) > MAX_REQUEST_BASE64) {
        const mb = (len / 1e6).toFixed(1);
        throw new Refusal({
          result: 'too_large',
          reply: {
            code: 552,
            enhanced: '5.3.4',
            text: `Message too large for Microsoft Graph: ${mb} MB without its attachments${stripped.note ? ` (${stripped.note})` : ''}; at most about 2.9 MB of text and inline parts fit one request`,
          },
        });
      }
    }
    const created = await this.#authed({
      call: 'create_draft',
      method: 'POST',
      url: `${this.#base}/messages`,
      body: base64Of(mime),
      contentType: 'text/plain',
    });
    const id = (created.json as { id?: unknown } | undefined)?.id;
    if (typeof id !== 'string' || id === '') {
      throw new GraphError('http', 'create_draft', { status: created.status, code: 'NoMessageId' });
    }
    const draft = `${this.#base}/messages/${encodeURIComponent(id)}`;
    try {
      for (const a of attachments) {
        await this.#attach(draft, a);
        this.uploaded++;
      }
      if (!this.target.saveToSentItems) {
        await this.#authed({
          call: 'patch',
          method: 'PATCH',
          url: draft,
          // PR_DELETE_AFTER_SUBMIT: Exchange drops the item once it is submitted (no Sent Items copy).
          body: JSON.stringify({ singleValueExtendedProperties: [{ id: 'Boolean 0x0E01', value: 'true' }] }),
          contentType: 'application/json',
        });
      }
      await this.#authed({ call: 'send_draft', method: 'POST', url: `${draft}/send` });
    } catch (err) {
      await this.#deleteDraft(draft);
      throw err;
    }
  }

  async #attach(draft: string, a: MimeAttachment): Promise<void> {
    const size = a.content.size;
    const common = { name: a.name, contentType: a.contentType, isInline: a.isInline };
    const cid = a.contentId === undefined ? {} : { contentId: a.contentId };
    if (size < UPLOAD_SESSION_FROM) {
      await this.#authed({
        call: 'attach',
        method: 'POST',
        url: `${draft}/attachments`,
        contentType: 'application/json',
        body: JSON.stringify({
          '@odata.type': '#microsoft.graph.fileAttachment',
          ...common,
          ...cid,
          contentBytes: a.content.read(0, size).toString('base64'),
        }),
      });
      return;
    }
    const session = await this.#authed({
      call: 'create_upload_session',
      method: 'POST',
      url: `${draft}/attachments/createUploadSession`,
      contentType: 'application/json',
      body: JSON.stringify({ AttachmentItem: { attachmentType: 'file', ...common, ...cid, size } }),
    });
    const uploadUrl = (session.json as { uploadUrl?: unknown } | undefined)?.uploadUrl;
    if (typeof uploadUrl !== 'string' || !/^https?:\/\//i.test(uploadUrl)) {
      throw new GraphError('http', 'create_upload_session', { status: session.status, code: 'NoUploadUrl' });
    }
    await this.client.upload(uploadUrl, a.content);
  }

  /** Best effort: a draft left behind after a failure is removed, on its own clock. */
  async #deleteDraft(draft: string): Promise<void> {
    if (this.#token === undefined) return;
    try {
      await this.client.request({
        call: 'delete_draft',
        method: 'DELETE',
        url: draft,
        token: this.#token,
        signal: new AbortController().signal,
      });
    } catch (err) {
      this.log.warn(
        { provider: this.target.provider, why: err instanceof Error ? err.message : 'error' },
        'Graph draft left behind after a failed delivery',
      );
    }
  }

  /** A request with the bearer token; after a 401, once per delivery, again with a fresh token. */
  async #authed(req: Omit<GraphRequest, 'token'>): Promise<GraphResponse> {
    this.#token ??= await this.#getToken(false);
    try {
      return await this.client.request({ ...req, token: this.#token });
    } catch (err) {
      if (!(err instanceof GraphError && err.status === 401)) throw err;
      if (this.#refreshed) throw new Unauthorized('Graph refused a fresh token', { cause: err });
    }
    this.#refreshed = true;
    this.#token = await this.#getToken(true);
    try {
      return await this.client.request({ ...req, token: this.#token });
    } catch (err) {
      if (err instanceof GraphError && err.status === 401) {
        throw new Unauthorized('Graph refused a fresh token', { cause: err });
      }
      throw err;
    }
  }

  async #getToken(force: boolean): Promise<string> {
    try {
      return await this.tokens(force);
    } catch (err) {
      throw new TokenFailure('no Graph token', { cause: err });
    }
  }
}

/** The reply table of Graph delivery. */
export function mapFailure(err: unknown, draftPath: boolean): Outcome {
  const out = (result: DeliveryResult, code: number, enhanced: string, text: string): Outcome => ({
    result,
    reply: { code, enhanced, text },
  });
  if (err instanceof Refusal) return err.outcome;
  if (err instanceof TokenFailure) {
    const cause = err.cause;
    if (isProxyError(cause) && cause.reason === 'needs_consent') {
      return out(
        'needs_consent',
        550,
        '5.7.8',
        clean(cause.clientText ?? 'The mailbox must be reconnected', 300),
      );
    }
    return out(
      'token_unavailable',
      451,
      '4.7.0',
      'Could not get a Microsoft Graph access token; try again later',
    );
  }
  if (err instanceof Unauthorized) {
    return out(
      'token_unavailable',
      451,
      '4.7.0',
      'Microsoft Graph refused the access token; try again later',
    );
  }
  if (!(err instanceof GraphError)) {
    return out('unavailable', 451, '4.3.0', 'Microsoft Graph delivery failed; try again later');
  }
  const said = `${err.code ?? `HTTP ${err.status}`}${err.graphMessage ? `: ${err.graphMessage}` : ''}`;
  switch (err.kind) {
    case 'aborted':
      return out('aborted', 451, '4.4.2', 'Connection closed before delivery finished');
    case 'timeout':
      return out('timeout', 451, '4.4.1', 'No answer from Microsoft Graph in time; try again later');
    case 'network':
      return out('unavailable', 451, '4.3.0', 'Microsoft Graph unreachable; try again later');
    case 'http':
      break;
  }
  const status = err.status ?? 0;
  if (status === 429 || ((status === 503 || status === 504) && err.retryAfterMs !== undefined)) {
    const wait =
      err.retryAfterMs === undefined ? 'later' : `after ${Math.max(1, Math.ceil(err.retryAfterMs / 1000))} s`;
    return out('throttled', 451, '4.3.0', `Microsoft Graph is throttling (HTTP ${status}); retry ${wait}`);
  }
  if (status >= 500)
    return out('unavailable', 451, '4.3.0', `Microsoft Graph unavailable (${said}); try again later`);
  if (status === 400)
    return out('bad_message', 554, '5.6.0', `Microsoft Graph refused the message (${said})`);
  if (status === 413) return out('too_large', 552, '5.3.4', 'Message too large for Microsoft Graph');
  if (status === 403) {
    if (err.code === 'ErrorSendAsDenied') {
      return out(
        'access_denied',
        550,
        '5.7.1',
        'Microsoft Graph refused to send as the From address (ErrorSendAsDenied): grant the mailbox Send As on that address, or send from its own address',
      );
    }
    const grant = draftPath
      ? 'Mail.Send and Mail.ReadWrite (large messages and no Sent Items copy use a draft)'
      : 'Mail.Send';
    return out(
      'access_denied',
      550,
      '5.7.1',
      `Microsoft Graph denied access (${err.code ?? 'HTTP 403'}): grant the app ${grant}`,
    );
  }
  if (status === 401) {
    return out(
      'token_unavailable',
      451,
      '4.7.0',
      'Microsoft Graph refused the access token; try again later',
    );
  }
  return out('unavailable', 451, '4.3.0', `Microsoft Graph answered ${said}; try again later`);
}
