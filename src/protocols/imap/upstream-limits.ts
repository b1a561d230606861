/**
 * Every buffer bound on the upstream side before the splice. Access tokens reach ~12 KB, so
 * an AUTHENTICATE line with its base64 blob is ~17 KB: upstream lines get a generous cap.
 */
export const UPSTREAM_LIMITS = {
  /** One response line (without literals), e.g. a `+ <base64 JSON>` continuation. */
  lineBytes: 64 * 1024,
  /** One literal inside a pre-auth response (servers hardly send any). */
  literalBytes: 64 * 1024,
  /** Literals in one response. */
  literalsPerResponse: 64,
  /** A whole response: lines plus literals. */
  responseBytes: 256 * 1024,
  /** Untagged responses tolerated while waiting for one tagged reply. */
  untaggedPerCommand: 1000,
} as const;
