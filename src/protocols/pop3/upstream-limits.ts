/**
 * Every buffer bound on the POP3 upstream side before the splice. Access tokens reach ~12 KB,
 * so a challenge or an echoed line can be ~17 KB: response lines get a generous cap.
 */
export const POP3_UPSTREAM_LIMITS = {
  /** One line without its CRLF: a status line, a `+ <base64 JSON>` challenge, a CAPA line. */
  lineBytes: 64 * 1024,
  /** Lines in one multi-line response (a CAPA answer has about a dozen). */
  responseLines: 256,
  /** One whole response, and the unread bytes held while nobody reads. */
  responseBytes: 256 * 1024,
  /** Responses read for one AUTH: the `+ ` prompt, the failure challenge, then the final one. */
  responsesPerAuth: 4,
  /** RFC 5034 §4: an AUTH command with its initial response fits in 255 octets, CRLF included. */
  authLineOctets: 255,
} as const;
