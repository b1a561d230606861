/**
 * When to refresh ahead of expiry: once under `fraction` of the lifetime or `seconds` remain,
 * but never earlier than half-way, so short-lived tokens are not refreshed on every use.
 */
export function refreshAt(
  issuedAt: number,
  expiresAt: number,
  tokens: { refresh_before_seconds: number; refresh_before_fraction: number },
): number {
  const lifetime = Math.max(0, expiresAt - issuedAt);
  const margin = Math.min(
    Math.max(lifetime * tokens.refresh_before_fraction, tokens.refresh_before_seconds * 1000),
    lifetime / 2,
  );
  return expiresAt - margin;
}
