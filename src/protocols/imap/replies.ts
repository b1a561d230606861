import type { FailureReason } from '../../errors.js';

/** RFC 5530 response code and default text an IMAP client sees for each failure. */
export interface ImapReply {
  readonly code: string;
  readonly text: string;
}

const REPLIES: Record<FailureReason, ImapReply> = {
  bad_credentials: { code: 'AUTHENTICATIONFAILED', text: 'Invalid credentials' },
  account_disabled: { code: 'CONTACTADMIN', text: 'Account disabled; contact your administrator' },
  limited: { code: 'LIMIT', text: 'Too many failed logins; try again later' },
  session_limit: { code: 'LIMIT', text: 'Too many concurrent sessions for this account' },
  privacy_required: { code: 'PRIVACYREQUIRED', text: 'Use STARTTLS or implicit TLS before logging in' },
  no_grant: { code: 'CONTACTADMIN', text: 'Mailbox not connected yet; contact your administrator' },
  // The reply's extra words say where (or whom to ask) to reconnect.
  needs_consent: { code: 'EXPIRED', text: 'Mailbox authorization expired' },
  token_unavailable: { code: 'UNAVAILABLE', text: 'Authorization server unavailable; try again later' },
  upstream_rejected: { code: 'AUTHORIZATIONFAILED', text: 'Mail server rejected the authorization' },
  upstream_unavailable: { code: 'UNAVAILABLE', text: 'Mail server unavailable; try again later' },
  authorization_failed: {
    code: 'AUTHORIZATIONFAILED',
    text: 'Mail server refused access to the mailbox; check mailbox permissions',
  },
  protocol_disabled: {
    code: 'AUTHORIZATIONFAILED',
    text: 'The mail provider has this protocol switched off for the mailbox; the administrator must enable it',
  },
  scope_missing: {
    code: 'AUTHORIZATIONFAILED',
    text: 'The mailbox was connected without permission for this protocol',
  },
  mailbox_in_use: { code: 'INUSE', text: 'Mailbox in use by another session; try again later' },
  protocol_error: { code: 'UNAVAILABLE', text: 'Mail server protocol error' },
  timeout: { code: 'UNAVAILABLE', text: 'Timed out; try again later' },
  // The client left mid-login; nobody reads this reply, but the attempt is counted.
  aborted: { code: 'UNAVAILABLE', text: 'Login abandoned' },
};

export function imapReply(reason: FailureReason): ImapReply {
  return REPLIES[reason];
}

/** The reply text with the failure's extra words (where to reconnect, what to enable). */
export function imapReplyText(reason: FailureReason, clientText: string | undefined): string {
  const base = REPLIES[reason].text;
  return clientText ? `${base}. ${clientText}` : base;
}
