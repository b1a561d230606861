import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';

const CSS = `body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1d2430;line-height:1.45}
h1{font-size:1.5rem}a.button{display:inline-block;padding:.6rem 1.1rem;margin:.3rem .3rem .3rem 0;background:#2563eb;color:#fff;border-radius:6px;text-decoration:none}
.password{font:600 1.5rem ui-monospace,monospace;letter-spacing:.05em;background:#f1f5f9;border:1px solid #cbd5e1;border-radius:6px;padding:.7rem 1rem;display:inline-block;user-select:all}
table{border-collapse:collapse;margin:.8rem 0}th,td{text-align:left;padding:.3rem .8rem .3rem 0;border-bottom:1px solid #e2e8f0;vertical-align:top}
.warn{background:#fff7ed;border-left:4px solid #f97316;padding:.5rem .8rem}.error{background:#fef2f2;border-left:4px solid #dc2626;padding:.5rem .8rem}
.muted{color:#64748b;font-size:.9rem}`;
const CSS_HASH = createHash('sha256').update(CSS).digest('base64');

/** No scripts, no frames, no third parties; only the one inline stylesheet (by hash). */
export const CSP = `default-src 'none'; style-src 'sha256-${CSS_HASH}'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'`;

export function esc(s: string | number): string {
  return String(s).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string,
  );
}

export function securityHeaders(res: ServerResponse): void {
  res.setHeader('content-security-policy', CSP);
  res.setHeader('cache-control', 'no-store');
  res.setHeader('pragma', 'no-cache');
  // The callback URL carries the authorization code: never leak it in a Referer.
  res.setHeader('referrer-policy', 'no-referrer');
  res.setHeader('x-content-type-options', 'nosniff');
  res.setHeader('x-frame-options', 'DENY');
}

/** Sends a complete HTML page; `body` must already be escaped. */
export function page(res: ServerResponse, status: number, title: string, body: string): void {
  securityHeaders(res);
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' });
  res.end(
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${esc(title)}</title><style>${CSS}</style></head><body><h1>${esc(title)}</h1>${body}</body></html>`,
  );
}

export function redirect(res: ServerResponse, location: string, cookies: string[] = []): void {
  securityHeaders(res);
  if (cookies.length > 0) res.setHeader('set-cookie', cookies);
  res.writeHead(302, { location });
  res.end();
}
