import type { Duplex } from 'node:stream';
import type { Config } from '../config/schema.js';

/** Every protocol-neutral limit of a connection before login, in one place. */
export interface SessionLimits {
  /** Bad or unknown commands before the connection is closed. */
  readonly badCommands: number;
  /** Commands of any kind before login (a NOOP every minute cannot hold a connection for ever). */
  readonly preauthCommands: number;
  /** Failed logins on one connection before it is closed. */
  readonly failedLogins: number;
  /** Time allowed between complete commands (and for the TLS/PROXY preamble) before login. */
  readonly preauthIdleMs: number;
  /** Time the login may take before the client is told to try again later. */
  readonly loginTimeoutMs: number;
  /** Wait this long before the greeting; a client talking meanwhile is closed (0 = off). */
  readonly greetingDelayMs: number;
  /** Largest PROXY protocol header accepted (v1 is at most 107 bytes, v2 is 16 + length). */
  readonly proxyHeaderBytes: number;
  /** Longest a connection may stay connected without logging in, however busy (0 = no bound). */
  readonly preauthLifetimeMs: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  badCommands: 5,
  preauthCommands: 50,
  failedLogins: 3,
  preauthIdleMs: 60_000,
  loginTimeoutMs: 30_000,
  greetingDelayMs: 0,
  proxyHeaderBytes: 536,
  preauthLifetimeMs: 120_000,
};

export function sessionLimitsFromConfig(cfg: Config['limits']): SessionLimits {
  return {
    ...DEFAULT_SESSION_LIMITS,
    badCommands: cfg.bad_commands,
    preauthCommands: cfg.preauth_commands,
    failedLogins: cfg.failed_logins_per_connection,
    preauthIdleMs: Math.round(cfg.preauth_idle_seconds * 1000),
    loginTimeoutMs: Math.round(cfg.login_timeout_seconds * 1000),
    preauthLifetimeMs: Math.round(cfg.preauth_lifetime_seconds * 1000),
  };
}

/** Why a front door closed a connection before login (metric label values, every protocol). */
export const REJECT_REASONS = [
  'line_too_long',
  'literal_too_long',
  'too_many_literals',
  'message_too_long',
  'too_many_bad_commands',
  'too_many_commands',
  'too_many_failed_logins',
  'idle_timeout',
  'talk_before_greeting',
  'http_request',
  'starttls_injection',
  'proxy_header_untrusted',
  'proxy_header_invalid',
  'tls_handshake',
  'not_allowed',
  'address_locked',
  'too_many_from_address',
  'too_many_unauthenticated',
  'preauth_lifetime',
  'shutdown',
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** Upstream dialling bounds shared by every protocol. */
export const DIAL_LIMITS = {
  /** TLS sessions remembered for resumption (one per host:port:servername:ca). */
  tlsSessions: 1000,
  /** Pre-dialled connections kept per upstream target while logins arrive (see pool.ts). */
  warmConnections: 2,
  /** Pre-dialled connections over all targets together (many per-account upstreams stay bounded). */
  warmConnectionsTotal: 256,
  /** A warm connection unused this long is closed: below common pre-login idle timeouts. */
  warmIdleMs: 30_000,
} as const;

/** Grace for a peer to read our last words before the socket is destroyed. */
const LINGER_MS = 2000;

/**
 * Ends a stream cleanly after a breach: last words (if any), FIN, and a hard destroy shortly
 * after so a peer that never reads cannot keep the socket (and its buffers) alive.
 */
export function failStream(stream: Duplex, lastWords?: string): void {
  if (stream.destroyed) return;
  stream.removeAllListeners('data');
  stream.pause();
  if (lastWords !== undefined && stream.writable) stream.end(lastWords);
  else stream.end();
  setTimeout(() => stream.destroy(), LINGER_MS).unref();
}
