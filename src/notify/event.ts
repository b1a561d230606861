import { randomUUID } from 'node:crypto';
import type { NotifyEvent } from '../config/schema.js';
import type { AccountRecord } from '../store/types.js';

/** What a webhook is told about a grant: names and a reason, never a token or password. */
export interface GrantEvent {
  /** Stable across retries of one event, so a receiver can drop duplicates. */
  id: string;
  event: NotifyEvent;
  /** ISO 8601, when the proxy saw the change. */
  time: string;
  login: string;
  mailbox: string;
  provider: string;
  /** Why (the provider's error, secrets removed, at most REASON_MAX characters), or null. */
  reason: string | null;
  /** `<admin.public_url>/connect`, when public_url is set. */
  reconnectUrl: string | null;
}

export const REASON_MAX = 300;

/** Long base64/hex-like runs and JWTs: anything that could be a token is cut out of a reason. */
const TOKENISH = /[A-Za-z0-9_\-+/=.~]{32,}/g;
const BEARER = /\b(bearer|basic)\s+\S+/gi;

/** A provider's error text made safe to send: no token-like runs, no control characters, bounded. */
export function safeReason(text: string | null | undefined): string | null {
  if (!text) return null;
  const cleaned = text
    .replace(BEARER, '$1 [redacted]')
    .replace(TOKENISH, '[redacted]')
    .replace(/[\u0000-\u001f\u007f]+/g, ' ')
    .trim();
  if (cleaned === '') return null;
  return cleaned.length > REASON_MAX ? `${cleaned.slice(0, REASON_MAX - 1)}…` : cleaned;
}

export function connectUrl(publicUrl: string | undefined): string | null {
  return publicUrl ? `${publicUrl.replace(/\/+$/, '')}/connect` : null;
}

export function grantEvent(
  event: NotifyEvent,
  account: AccountRecord,
  reason: string | null | undefined,
  publicUrl: string | undefined,
  at = Date.now(),
): GrantEvent {
  return {
    id: randomUUID(),
    event,
    time: new Date(at).toISOString(),
    login: account.logins[0] ?? '',
    mailbox: account.upstreamUser,
    provider: account.provider,
    reason: event === 'grant.needs_consent' ? safeReason(reason) : null,
    reconnectUrl: connectUrl(publicUrl),
  };
}
