import type { IncomingMessage } from 'node:http';

/** The named cookie's value; undefined when absent or not valid percent-encoding (a browser never sends that). */
export function readCookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      try {
        return decodeURIComponent(part.slice(eq + 1).trim());
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

/**
 * HttpOnly, path-scoped to the callback. SameSite=Lax (not Strict): the IdP's redirect back
 * is a cross-site top-level navigation, which Strict would send without the cookie.
 */
export function stateCookie(
  name: string,
  value: string,
  opts: { path: string; secure: boolean; maxAgeS: number },
): string {
  return [
    `${name}=${encodeURIComponent(value)}`,
    `Path=${opts.path}`,
    `Max-Age=${opts.maxAgeS}`,
    'HttpOnly',
    'SameSite=Lax',
    ...(opts.secure ? ['Secure'] : []),
  ].join('; ');
}
