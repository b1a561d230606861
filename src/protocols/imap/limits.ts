import type { Config } from '../../config/schema.js';
import { DEFAULT_SESSION_LIMITS, type SessionLimits, sessionLimitsFromConfig } from '../../net/limits.js';

/** IMAP's own wire limits before login, beside the protocol-neutral ones. */
export interface ImapWireLimits {
  /** Bytes of command text (all line parts of one command, CRLF and literal bytes excluded). */
  readonly lineBytes: number;
  /** Bytes of one literal. */
  readonly literalBytes: number;
  /** Literals in one command (LOGIN needs two). */
  readonly literalsPerCommand: number;
}

export type WireLimits = SessionLimits & ImapWireLimits;

export const DEFAULT_LIMITS: WireLimits = {
  ...DEFAULT_SESSION_LIMITS,
  lineBytes: 8192,
  literalBytes: 8192,
  literalsPerCommand: 4,
};

export function limitsFromConfig(cfg: Config['limits']): WireLimits {
  return {
    ...DEFAULT_LIMITS,
    ...sessionLimitsFromConfig(cfg),
    lineBytes: cfg.line_bytes,
    literalBytes: cfg.literal_bytes,
  };
}
