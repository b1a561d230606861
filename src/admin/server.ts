import { timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { type AdminAuthLimiter, limitedAuth } from './auth-limiter.js';

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void> | void;

export interface Route {
  method: 'GET' | 'POST';
  path: string;
  handler: Handler;
}

export interface ReadinessCheck {
  name: string;
  check: () => Promise<void>;
}

export interface AdminServerOptions {
  address: string;
  port: number;
  metrics: Metrics;
  log: Logger;
  readiness: ReadinessCheck[];
  metricsBearerToken?: string | undefined;
  /** Extra routes (onboarding pages, status). */
  routes?: Route[];
  /** Locks out addresses that keep failing /metrics authentication (shared with /status). */
  authLimiter?: AdminAuthLimiter;
  /** Serve `routes` only: no /healthz, /readyz or /metrics (the separate /connect server). */
  onlyRoutes?: boolean;
}

/** Constant-time comparison of a presented secret with the expected one. */
export function secretEquals(presented: string, expected: string): boolean {
  const a = Buffer.from(presented);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Whether an Authorization header may read /metrics: `Bearer <token>`, or Basic auth with
 * user "metrics" and the token as password (for scrapers that only speak Basic).
 */
export function metricsAuthorized(authorization: string | undefined, token: string): boolean {
  const auth = authorization ?? '';
  if (auth.startsWith('Bearer ')) return secretEquals(auth.slice(7), token);
  if (!auth.startsWith('Basic ')) return false;
  const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return false;
  // Both parts always compared, so the answer time does not tell which one was wrong.
  const userOk = secretEquals(decoded.slice(0, colon), 'metrics');
  const passOk = secretEquals(decoded.slice(colon + 1), token);
  return userOk && passOk;
}

/**
 * The /metrics credential check (single process and cluster primary): true when the request
 * may scrape; otherwise it has answered 401 with a challenge, or 429 while the address is locked out.
 */
export function metricsGate(
  req: IncomingMessage,
  res: ServerResponse,
  token: string | undefined,
  limiter: AdminAuthLimiter | undefined,
): boolean {
  if (!token) return true;
  const outcome = limitedAuth(limiter, req, res, () => metricsAuthorized(req.headers.authorization, token));
  if (outcome === 'denied') {
    res.setHeader('www-authenticate', 'Bearer realm="metrics", Basic realm="metrics"');
    send(res, 401, 'unauthorized\n');
  }
  return outcome === 'ok';
}

export function send(
  res: ServerResponse,
  status: number,
  body: string,
  type = 'text/plain; charset=utf-8',
): void {
  res.writeHead(status, {
    'content-type': type,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(body);
}

export class AdminServer {
  private readonly server: Server;
  private readonly routes = new Map<string, Handler>();

  constructor(private readonly opts: AdminServerOptions) {
    if (!opts.onlyRoutes) {
      this.routes.set('GET /healthz', (_q, res) => send(res, 200, 'ok\n'));
      this.routes.set('GET /readyz', (_q, res) => this.readyz(res));
      this.routes.set('GET /metrics', (req, res) => this.metrics(req, res));
    }
    for (const r of opts.routes ?? []) this.routes.set(`${r.method} ${r.path}`, r.handler);
    this.server = createServer((req, res) => void this.dispatch(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
  }

  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.opts.port, this.opts.address, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return this.server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin.invalid');
    const handler = this.routes.get(`${req.method === 'HEAD' ? 'GET' : req.method} ${url.pathname}`);
    try {
      if (!handler) {
        const known = [...this.routes.keys()].some((k) => k.endsWith(` ${url.pathname}`));
        send(res, known ? 405 : 404, known ? 'method not allowed\n' : 'not found\n');
        return;
      }
      await handler(req, res, url);
    } catch (err) {
      this.opts.log.error({ err, path: url.pathname }, 'admin request failed');
      if (!res.headersSent) send(res, 500, 'internal error\n');
      else res.destroy();
    }
  }

  private async readyz(res: ServerResponse): Promise<void> {
    const failed: string[] = [];
    await Promise.all(
      this.opts.readiness.map(async (c) => {
        try {
          await c.check();
        } catch (err) {
          failed.push(c.name);
          this.opts.log.warn({ err, check: c.name }, 'readiness check failed');
        }
      }),
    );
    if (failed.length === 0) send(res, 200, 'ready\n');
    else send(res, 503, `not ready: ${failed.sort().join(', ')}\n`);
  }

  private async metrics(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!metricsGate(req, res, this.opts.metricsBearerToken, this.opts.authLimiter)) return;
    const { registry } = this.opts.metrics;
    send(res, 200, await registry.metrics(), registry.contentType);
  }
}
