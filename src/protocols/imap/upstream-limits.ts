/**
 * Every buffer bound on the upstream side before the splice. Access tokens reach ~12 KB, so
 * an AUTHENTICATE line with its base64 blob is ~17 KB: upstream lines get a generous cap.
 */
export const UPSTREAM_LIMITS = {
  /** One response line (without literals), e.g. a `+ <base64 JSON>` continuation. */
  lineBytes: 64 * 1024,
  /** One literal inside a pre-auth response (servers hardly send any). */
  literalBytes: 64 * 1024,
  /** A whole response: lines plus literals. */
  responseBytes: 256 * 1024,
  /** Untagged responses tolerated while waiting for one tagged reply. */
  untaggedPerCommand: 1000,
  /** TLS sessions remembered for resumption (one per host:port:servername:ca). */
  tlsSessions: 1000,
  /** Pre-dialled connections kept per upstream target while logins arrive (see pool.ts). */
  warmConnections: 2,
  /** Pre-dialled connections over all targets together (many per-account upstreams stay bounded). */
  warmConnectionsTotal: 256,
  /** A warm connection unused this long is closed: below common pre-login idle timeouts. */
  warmIdleMs: 30_000,
} as const;
