/**
 * Every buffer bound on the SMTP upstream side before the splice. Access tokens reach ~12 KB,
 * so a challenge or an echoed line can be ~17 KB: reply lines get a generous cap.
 */
export const SMTP_UPSTREAM_LIMITS = {
  /** One reply line without its CRLF, e.g. a `334 <base64 JSON>` challenge. */
  lineBytes: 64 * 1024,
  /** Lines in one multi-line reply (an EHLO reply has a dozen). */
  replyLines: 128,
  /** One whole reply, and the unread bytes held while nobody reads. */
  replyBytes: 256 * 1024,
  /** Replies read for one AUTH: the failure challenge, then the final reply. */
  repliesPerAuth: 3,
} as const;
