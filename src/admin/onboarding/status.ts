import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Config } from '../../config/schema.js';
import type { GrantStore } from '../../store/types.js';
import { type AdminAuthLimiter, limitedAuth } from '../auth-limiter.js';
import { secretEquals } from '../server.js';
import { esc, page } from './html.js';

const USER = 'admin';

export interface StatusRow {
  logins: string[];
  mailbox: string;
  provider: string;
  status: string;
  appPasswords: number;
  grant: { kind: string; status: string; lastRefreshAt: number | null; lastError: string | null } | null;
  lastLoginAt: number | null;
}

/** Basic auth against admin.admin_password in constant time; refused outright when unset. */
export function adminAuthorized(
  req: IncomingMessage,
  res: ServerResponse,
  password: string | undefined,
  limiter: AdminAuthLimiter | undefined,
): boolean {
  if (!password) {
    page(res, 403, 'Status disabled', '<p>Set admin.admin_password to enable this page.</p>');
    return false;
  }
  const outcome = limitedAuth(limiter, req, res, () => {
    const auth = req.headers.authorization ?? '';
    const decoded = auth.startsWith('Basic ') ? Buffer.from(auth.slice(6), 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    return (
      colon > 0 &&
      secretEquals(decoded.slice(0, colon), USER) &&
      secretEquals(decoded.slice(colon + 1), password)
    );
  });
  const ok = outcome === 'ok';
  if (outcome === 'denied') {
    res.setHeader('www-authenticate', 'Basic realm="imap-oauth-proxy status", charset="UTF-8"');
    page(res, 401, 'Unauthorized', '<p>Log in as "admin".</p>');
  }
  return ok;
}

export async function statusRows(store: GrantStore): Promise<StatusRow[]> {
  const rows: StatusRow[] = [];
  for (const a of await store.listAccounts()) {
    const [g, pw] = await Promise.all([store.getGrant(a.id), store.listAppPasswords(a.id)]);
    rows.push({
      logins: a.logins,
      mailbox: a.upstreamUser,
      provider: a.provider,
      status: a.status,
      appPasswords: pw.length,
      grant: g
        ? { kind: g.kind, status: g.status, lastRefreshAt: g.lastRefreshAt, lastError: g.lastError }
        : null,
      lastLoginAt: a.lastLoginAt,
    });
  }
  return rows;
}

const when = (ms: number | null) =>
  ms === null ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

/** /status: what admins would otherwise grep logs for. `?format=json` for scripts. */
export function statusHandler(deps: { store: GrantStore; config: Config; authLimiter?: AdminAuthLimiter }) {
  return async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    if (!adminAuthorized(req, res, deps.config.admin.admin_password, deps.authLimiter)) return;
    const rows = await statusRows(deps.store);
    if (url.searchParams.get('format') === 'json') {
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify({ accounts: rows }));
      return;
    }
    const body = rows
      .map(
        (r) =>
          `<tr><td>${esc(r.logins.join(', '))}</td><td>${esc(r.mailbox)}</td><td>${esc(r.provider)}</td><td>${esc(r.status)}</td><td>${r.appPasswords}</td><td>${r.grant ? esc(`${r.grant.kind} ${r.grant.status}`) : 'none'}</td><td>${when(r.grant?.lastRefreshAt ?? null)}</td><td>${esc(r.grant?.lastError ?? '-')}</td><td>${when(r.lastLoginAt)}</td></tr>`,
      )
      .join('');
    page(
      res,
      200,
      'Accounts',
      `<table><tr><th>Logins</th><th>Mailbox</th><th>Provider</th><th>Account</th><th>App passwords</th><th>Grant</th><th>Last refresh</th><th>Last error</th><th>Last login</th></tr>${body}</table>`,
    );
  };
}
