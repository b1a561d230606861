/**
 * Every way a login can end, as a bounded set. These strings are metric label values and
 * log fields, so they never carry user data.
 */
export const LOGIN_RESULTS = [
  'success',
  'bad_credentials',
  'account_disabled',
  'limited',
  'session_limit',
  'privacy_required',
  'no_grant',
  'needs_consent',
  'token_unavailable',
  'upstream_rejected',
  'upstream_unavailable',
  'authorization_failed',
  /** The provider has this protocol switched off for the mailbox or tenant (e.g. SMTP AUTH). */
  'protocol_disabled',
  /** The grant's token lacks the scope this protocol needs (e.g. sending): reconnect the mailbox. */
  'scope_missing',
  /** The upstream says the mailbox is locked by another session (POP3 `[IN-USE]`). */
  'mailbox_in_use',
  'protocol_error',
  'timeout',
  'aborted',
] as const;
export type LoginResult = (typeof LOGIN_RESULTS)[number];
export type FailureReason = Exclude<LoginResult, 'success'>;

/** The connection itself failed before an answer (closed, reset, not reusable): a fresh dial may help. */
export const CONNECTION_DETAILS = ['closed', 'socket_error', 'not_reusable'] as const;
export type ConnectionDetail = (typeof CONNECTION_DETAILS)[number];

export function isConnectionFailure(err: unknown): boolean {
  return isProxyError(err) && (CONNECTION_DETAILS as readonly string[]).includes(err.detail ?? '');
}

/** Every finer cause a ProxyError can carry: bounded, so logs and tests can rely on it. */
export type FailureDetail =
  | ConnectionDetail
  // dial and TLS
  | 'connect_failed'
  | 'connect_refused'
  | 'connect_timeout'
  | 'host_unreachable'
  | 'dns_failed'
  | 'connection_reset'
  | 'tls_verify'
  | 'tls_handshake'
  | 'ca_file'
  | 'aborted'
  // upstream protocol
  | 'greeting_bye'
  | 'greeting_preauth'
  | 'greeting_invalid'
  | 'starttls_refused'
  | 'starttls_injection'
  | 'no_capability'
  | 'unexpected_response'
  | 'untagged_flood'
  | 'response_timeout'
  | 'line_too_long'
  | 'literal_too_long'
  | 'message_too_long'
  | 'too_many_literals'
  | 'sasl_loop'
  | 'auth_bad'
  | 'probe_failed'
  | 'not_connected'
  | 'capability_mismatch'
  | 'smtp_auth_disabled'
  | 'pop_disabled'
  | 'scope_missing'
  | 'in_use'
  | 'no'
  | 'throttled'
  | 'temporary'
  | `json_${string}`
  // tokens and grants
  | 'invalid_grant'
  | 'no_token'
  | 'backoff'
  | 'breaker_open'
  | 'unknown_provider'
  | 'unsupported_grant_kind'
  | 'audience_unsupported'
  | 'timeout'
  | 'unavailable'
  | 'invalid_response'
  | `http_${string}`;

/**
 * The one error type that crosses folder boundaries. `reason` picks the client reply and the
 * metric label; `message` is for logs only and must never contain a secret.
 */
export class ProxyError extends Error {
  override readonly name = 'ProxyError';
  readonly reason: FailureReason;
  /** Optional extra words for the client (e.g. where to reconnect). Never a secret. */
  readonly clientText: string | undefined;
  /** Finer, still bounded, detail for logs (e.g. 'http_503', 'invalid_grant'). */
  readonly detail: FailureDetail | undefined;

  constructor(
    reason: FailureReason,
    message: string,
    opts: { cause?: unknown; clientText?: string; detail?: FailureDetail } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.reason = reason;
    this.clientText = opts.clientText;
    this.detail = opts.detail;
  }
}

export function isProxyError(err: unknown): err is ProxyError {
  return err instanceof ProxyError;
}

/** The message of a caught value, which JavaScript does not promise is an Error. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A configuration or usage error meant for an admin's eyes (CLI exits 1 with the message). */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}
