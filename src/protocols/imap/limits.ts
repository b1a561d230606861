import type { Duplex } from 'node:stream';
import type { Config } from '../../config/schema.js';

/** Every pre-authentication limit of the wire, in one place. */
export interface WireLimits {
  /** Bytes of command text (all line parts of one command, CRLF and literal bytes excluded). */
  readonly lineBytes: number;
  /** Bytes of one literal. */
  readonly literalBytes: number;
  /** Literals in one command (LOGIN needs two). */
  readonly literalsPerCommand: number;
  /** Bad or unknown commands before `* BYE`. */
  readonly badCommands: number;
  /** Time allowed between complete commands (and for the TLS/PROXY preamble) before login. */
  readonly preauthIdleMs: number;
  /** Time the login handler may take before the client is told `NO [UNAVAILABLE]`. */
  readonly loginTimeoutMs: number;
  /** Wait this long before the greeting; a client talking meanwhile is closed (0 = off). */
  readonly greetingDelayMs: number;
  /** Largest PROXY protocol header accepted (v1 is at most 107 bytes, v2 is 16 + length). */
  readonly proxyHeaderBytes: number;
}

export const DEFAULT_LIMITS: WireLimits = {
  lineBytes: 8192,
  literalBytes: 8192,
  literalsPerCommand: 4,
  badCommands: 5,
  preauthIdleMs: 60_000,
  loginTimeoutMs: 30_000,
  greetingDelayMs: 0,
  proxyHeaderBytes: 536,
};

export function limitsFromConfig(cfg: Config['limits']): WireLimits {
  return {
    ...DEFAULT_LIMITS,
    lineBytes: cfg.line_bytes,
    literalBytes: cfg.literal_bytes,
    badCommands: cfg.bad_commands,
    preauthIdleMs: Math.round(cfg.preauth_idle_seconds * 1000),
    loginTimeoutMs: Math.round(cfg.login_timeout_seconds * 1000),
  };
}

/** Why the front door closed a connection before login (metric label values). */
export const REJECT_REASONS = [
  'line_too_long',
  'literal_too_long',
  'too_many_literals',
  'too_many_bad_commands',
  'idle_timeout',
  'talk_before_greeting',
  'http_request',
  'starttls_injection',
  'proxy_header_untrusted',
  'proxy_header_invalid',
  'tls_handshake',
  'shutdown',
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

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
