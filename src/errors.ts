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
  'protocol_error',
  'timeout',
  'aborted',
] as const;
export type LoginResult = (typeof LOGIN_RESULTS)[number];
export type FailureReason = Exclude<LoginResult, 'success'>;

/** RFC 5530 response code and default text a client sees for each failure. */
export interface ClientReply {
  readonly code: string;
  readonly text: string;
}

const REPLIES: Record<FailureReason, ClientReply> = {
  bad_credentials: { code: 'AUTHENTICATIONFAILED', text: 'Invalid credentials' },
  account_disabled: { code: 'CONTACTADMIN', text: 'Account disabled; contact your administrator' },
  limited: { code: 'LIMIT', text: 'Too many failed logins; try again later' },
  session_limit: { code: 'LIMIT', text: 'Too many concurrent sessions for this account' },
  privacy_required: { code: 'PRIVACYREQUIRED', text: 'Use STARTTLS or implicit TLS before logging in' },
  no_grant: { code: 'CONTACTADMIN', text: 'Mailbox not connected yet; contact your administrator' },
  needs_consent: { code: 'EXPIRED', text: 'Mailbox authorization expired; reconnect the mailbox' },
  token_unavailable: { code: 'UNAVAILABLE', text: 'Authorization server unavailable; try again later' },
  upstream_rejected: { code: 'AUTHORIZATIONFAILED', text: 'Mail server rejected the authorization' },
  upstream_unavailable: { code: 'UNAVAILABLE', text: 'Mail server unavailable; try again later' },
  authorization_failed: {
    code: 'AUTHORIZATIONFAILED',
    text: 'Mail server refused access to the mailbox; check mailbox permissions',
  },
  protocol_error: { code: 'UNAVAILABLE', text: 'Mail server protocol error' },
  timeout: { code: 'UNAVAILABLE', text: 'Timed out; try again later' },
  // The client left mid-login; nobody reads this reply, but the attempt is counted.
  aborted: { code: 'UNAVAILABLE', text: 'Login abandoned' },
};

export function clientReply(reason: FailureReason): ClientReply {
  return REPLIES[reason];
}

/**
 * The one error type that crosses folder boundaries. `reason` picks the client reply and the
 * metric label; `message` is for logs only and must never contain a secret.
 */
export class ProxyError extends Error {
  override readonly name = 'ProxyError';
  readonly reason: FailureReason;
  /** Optional extra words for the client (e.g. where to reconnect). Never a secret. */
  readonly clientText: string | undefined;
  /** Finer, still bounded, detail for metrics/logs (e.g. 'http_503', 'invalid_grant'). */
  readonly detail: string | undefined;

  constructor(
    reason: FailureReason,
    message: string,
    opts: { cause?: unknown; clientText?: string; detail?: string } = {},
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

/** A configuration or usage error meant for an admin's eyes (CLI exits 1 with the message). */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}
