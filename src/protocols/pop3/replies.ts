import type { FailureReason } from '../../errors.js';

/** An RFC 3206 response code and default text a POP3 client sees for each failure. */
export interface Pop3Reply {
  readonly code: 'AUTH' | 'SYS/TEMP' | 'IN-USE';
  readonly text: string;
}

const REPLIES: Record<FailureReason, Pop3Reply> = {
  bad_credentials: { code: 'AUTH', text: 'Invalid credentials' },
  account_disabled: { code: 'AUTH', text: 'Account disabled; contact your administrator' },
  limited: { code: 'SYS/TEMP', text: 'Too many failed logins; try again later' },
  session_limit: { code: 'SYS/TEMP', text: 'Too many concurrent sessions for this account; try again later' },
  privacy_required: { code: 'AUTH', text: 'Use STLS or implicit TLS before logging in' },
  no_grant: { code: 'AUTH', text: 'Mailbox not connected yet; contact your administrator' },
  // The reply's extra words say where (or whom to ask) to reconnect.
  needs_consent: { code: 'AUTH', text: 'Mailbox authorization expired' },
  token_unavailable: { code: 'SYS/TEMP', text: 'Authorization server unavailable; try again later' },
  upstream_rejected: { code: 'AUTH', text: 'Mail server rejected the authorization' },
  upstream_unavailable: { code: 'SYS/TEMP', text: 'Mail server unavailable; try again later' },
  authorization_failed: {
    code: 'AUTH',
    text: 'Mail server refused access to the mailbox; check mailbox permissions',
  },
  protocol_disabled: {
    code: 'AUTH',
    text: 'The mail provider has POP3 switched off for this mailbox; the administrator must enable it',
  },
  scope_missing: {
    code: 'AUTH',
    text: 'The mailbox was connected without permission for POP3',
  },
  mailbox_in_use: { code: 'IN-USE', text: 'Mailbox in use by another session; try again later' },
  protocol_error: { code: 'SYS/TEMP', text: 'Mail server protocol error; try again later' },
  timeout: { code: 'SYS/TEMP', text: 'Timed out; try again later' },
  // The client left mid-login; nobody reads this reply, but the attempt is counted.
  aborted: { code: 'SYS/TEMP', text: 'Login abandoned' },
};

export function pop3Reply(reason: FailureReason): Pop3Reply {
  return REPLIES[reason];
}

/** `-ERR [CODE] text` CRLF with the failure's extra words (where to reconnect, what to enable). */
export function pop3FailureLine(reason: FailureReason, clientText: string | undefined): string {
  const r = REPLIES[reason];
  return err(r.code, clientText ? `${r.text}. ${clientText}` : r.text);
}

export function ok(text: string): string {
  return `+OK ${clean(text)}\r\n`;
}

export function err(code: string | undefined, text: string): string {
  return code === undefined ? `-ERR ${clean(text)}\r\n` : `-ERR [${code}] ${clean(text)}\r\n`;
}

/** A multi-line `+OK` response (RFC 1939 §3): lines starting with "." are byte-stuffed, then ".". */
export function multiline(first: string, lines: readonly string[]): string {
  const body = lines.map((l) => `${l.startsWith('.') ? '.' : ''}${clean(l)}\r\n`).join('');
  return `${ok(first)}${body}.\r\n`;
}

/** Reply text is printable ASCII: a control byte could end the line early, 8-bit text is undefined in POP3. */
function clean(text: string): string {
  return text.replace(/[^\x20-\x7e]/gu, (c) => (c < ' ' || c === '\x7f' ? ' ' : '?'));
}
