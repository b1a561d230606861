import type { FailureReason } from '../../errors.js';

/** An SMTP reply: basic code, RFC 3463 enhanced code and default text. */
export interface SmtpReply {
  readonly code: number;
  readonly enhanced: string;
  readonly text: string;
}

const TEMP = { code: 454, enhanced: '4.7.0' } as const;
const AUTH_FAILED = { code: 535, enhanced: '5.7.8' } as const;

/** What an SMTP client is told for each login failure (RFC 4954, 3463; DESIGN.md's table). */
const REPLIES: Record<FailureReason, SmtpReply> = {
  bad_credentials: { ...AUTH_FAILED, text: 'Authentication credentials invalid' },
  account_disabled: { ...AUTH_FAILED, text: 'Account disabled; contact your administrator' },
  limited: { ...TEMP, text: 'Too many failed logins; try again later' },
  session_limit: { ...TEMP, text: 'Too many concurrent sessions for this account; try again later' },
  privacy_required: {
    code: 538,
    enhanced: '5.7.11',
    text: 'Encryption required: use STARTTLS or implicit TLS before AUTH',
  },
  no_grant: { ...AUTH_FAILED, text: 'Mailbox not connected yet; contact your administrator' },
  // The reply's extra words say where (or whom to ask) to reconnect.
  needs_consent: { ...AUTH_FAILED, text: 'Mailbox authorization expired' },
  token_unavailable: { ...TEMP, text: 'Authorization server unavailable; try again later' },
  upstream_rejected: { ...AUTH_FAILED, text: 'Mail server rejected the authorization' },
  upstream_unavailable: { ...TEMP, text: 'Mail server unavailable; try again later' },
  authorization_failed: {
    ...AUTH_FAILED,
    text: 'Mail server refused access to the mailbox; check mailbox permissions',
  },
  protocol_disabled: {
    code: 535,
    enhanced: '5.7.139',
    text: 'Authenticated SMTP is switched off for this mailbox or tenant at the provider',
  },
  scope_missing: { ...AUTH_FAILED, text: 'The mailbox was connected without permission to send mail' },
  mailbox_in_use: { ...TEMP, text: 'Mailbox in use by another session; try again later' },
  protocol_error: { ...TEMP, text: 'Mail server protocol error; try again later' },
  timeout: { ...TEMP, text: 'Timed out; try again later' },
  // The client left mid-login; nobody reads this reply, but the attempt is counted.
  aborted: { ...TEMP, text: 'Login abandoned' },
};

export function smtpReply(reason: FailureReason): SmtpReply {
  return REPLIES[reason];
}

/** One reply line: `535 5.7.8 text`, with the failure's extra words (where to reconnect, what to enable). */
export function smtpFailureLine(reason: FailureReason, clientText: string | undefined): string {
  const r = REPLIES[reason];
  return line(r.code, r.enhanced, clientText ? `${r.text}. ${clientText}` : r.text);
}

/** `code enhanced text` CRLF; control characters never reach the wire. */
export function line(code: number, enhanced: string, text: string): string {
  return `${code} ${enhanced} ${clean(text)}\r\n`;
}

/** A multi-line reply: `250-a`, `250-b`, `250 c`. */
export function lines(code: number, texts: readonly string[]): string {
  return texts.map((t, i) => `${code}${i === texts.length - 1 ? ' ' : '-'}${clean(t)}\r\n`).join('');
}

function clean(text: string): string {
  return text.replace(/[\x00-\x1f\x7f]/g, ' ');
}
