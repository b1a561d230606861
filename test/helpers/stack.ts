import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { generateAppPassword, hashAppPassword } from '../../src/accounts/passwords.js';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { createLogger, type Logger } from '../../src/log.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import { type ProxyApp, startProxy } from '../../src/proxy/app.js';
import { generateKeyLine } from '../../src/store/crypto.js';
import type { AccountRecord } from '../../src/store/types.js';
import { type Dovecot, startDovecot } from './dovecot.js';
import { startOP, type TestOP } from './op.js';

/**
 * The whole real chain on loopback: oidc-provider (OAuth server) ← Dovecot (upstream IMAP,
 * introspecting tokens at the OP) ← the proxy (started in-process through startProxy, exactly
 * as `serve` does). Used by the end-to-end, metrics, interop and benchmark suites.
 */

export interface StackOptions {
  upstreamTls?: 'implicit' | 'starttls';
  mechanism?: 'xoauth2' | 'oauthbearer' | 'auto';
  accessTokenTtl?: number;
  /** Extra YAML merged at the end of the generated config's top level (e.g. "limits: {...}"). */
  configYaml?: (ctx: { op: TestOP; dovecot: Dovecot }) => string;
  /** Bring your own OP / Dovecot (shared across tests); they are not stopped by close(). */
  op?: TestOP;
  dovecot?: Dovecot;
  logLevel?: string;
}

export interface TestAccount {
  login: string;
  upstreamUser: string;
  password: string;
  account: AccountRecord;
  refreshToken: string | null;
  accessToken: string | null;
}

export interface Stack {
  op: TestOP;
  dovecot: Dovecot;
  app: ProxyApp;
  config: Config;
  metrics: Metrics;
  log: Logger;
  dir: string;
  /** Ports of the proxy's listeners: STARTTLS (cleartext until upgraded), implicit TLS, cleartext with login allowed. */
  ports: { starttls: number; imaps: number; plain: number; admin: number };
  /** The proxy's own (self-signed) certificate, for clients to trust. */
  proxyCaFile: string;
  /** Every log line the proxy wrote so far. */
  logs(): string;
  addAccount(
    login: string,
    opts?: {
      upstreamUser?: string;
      grant?: 'refresh_token' | 'none';
      maxSessions?: number;
      upstreamOverride?: Record<string, unknown>;
    },
  ): Promise<TestAccount>;
  close(): Promise<void>;
}

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const ownOp = !opts.op;
  const ownDovecot = !opts.dovecot;
  const op =
    opts.op ?? (await startOP({ accessTokenTtl: opts.accessTokenTtl ?? 3600, clientCredentials: true }));
  let dovecot: Dovecot | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'iop-stack-'));
  try {
    dovecot =
      opts.dovecot ??
      (await startDovecot({
        introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
        users: [{ name: 'direct@example.com', password: 'direct-password' }],
      }));
    const upstreamTls = opts.upstreamTls ?? 'implicit';
    const yaml = `
data_dir: ${JSON.stringify(dir)}
log: { level: ${opts.logLevel ?? 'debug'}, format: json }
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: starttls, address: 127.0.0.1, port: 0, tls: starttls }
  - { name: imaps, address: 127.0.0.1, port: 0, tls: implicit }
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true }
admin: { address: 127.0.0.1, port: 0, public_url: "https://proxy.example.test" }
providers:
  local:
    preset: oidc
    issuer: ${op.issuer}
    client_id: ${op.client.id}
    client_secret: ${op.client.secret}
    allow_insecure_http: true
    timeout_seconds: 5
    upstream:
      host: 127.0.0.1
      port: ${upstreamTls === 'implicit' ? dovecot.imapsPort : dovecot.imapPort}
      tls: ${upstreamTls}
      ca_file: ${JSON.stringify(dovecot.caFile)}
      mechanism: ${opts.mechanism ?? 'auto'}
      connect_timeout_seconds: 5
${opts.configYaml?.({ op, dovecot }) ?? ''}
`;
    const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
    const chunks: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(String(chunk));
        cb();
      },
    });
    const log = createLogger({ level: config.log.level, format: 'json', destination: sink });
    const metrics = createMetrics();
    const app = await startProxy(config, { log, metrics, version: 'test' });
    const d = dovecot;
    return {
      op,
      dovecot: d,
      app,
      config,
      metrics,
      log,
      dir,
      ports: {
        starttls: app.addresses.starttls!.port,
        imaps: app.addresses.imaps!.port,
        plain: app.addresses.plain!.port,
        admin: app.adminAddress.port,
      },
      proxyCaFile: join(dir, 'tls', 'selfsigned.crt'),
      logs: () => chunks.join(''),
      async addAccount(login, o = {}) {
        const upstreamUser = o.upstreamUser ?? (login.includes('@') ? login : `${login}@example.com`);
        const account = await app.store.createAccount(
          {
            login,
            upstreamUser,
            provider: 'local',
            ...(o.maxSessions !== undefined ? { maxSessions: o.maxSessions } : {}),
            ...(o.upstreamOverride ? { upstreamOverride: o.upstreamOverride } : {}),
          },
          'test',
        );
        const password = generateAppPassword();
        await app.store.addAppPassword(account.id, 'test', await hashAppPassword(password), 'test');
        let refreshToken: string | null = null;
        let accessToken: string | null = null;
        if ((o.grant ?? 'refresh_token') === 'refresh_token') {
          const t = await op.mintGrant(upstreamUser);
          refreshToken = t.refresh_token;
          accessToken = t.access_token;
          await app.store.putGrant(
            account.id,
            {
              kind: 'refresh_token',
              status: 'active',
              refreshToken,
              accessToken,
              accessTokenExpiresAt: Date.now() + t.expires_in * 1000,
              scope: null,
              lastRefreshAt: Date.now(),
              lastError: null,
            },
            'test',
          );
        }
        return {
          login,
          upstreamUser,
          password,
          account: (await app.store.getAccount(account.id))!,
          refreshToken,
          accessToken,
        };
      },
      async close() {
        await app.close({ drainMs: 0 });
        if (ownDovecot) await d.stop();
        if (ownOp) await op.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    if (ownDovecot) await dovecot?.stop();
    if (ownOp) await op.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

function withCredentials(url: string, id: string, secret: string): string {
  const u = new URL(url);
  u.username = encodeURIComponent(id);
  u.password = encodeURIComponent(secret);
  return u.toString();
}

/** A small RFC 5322 message with a unique marker, CRLF line ends. */
export function testMessage(subject: string, body = 'Hello from the test suite.'): Buffer {
  return Buffer.from(
    `From: sender@example.com\r\nTo: alice@example.com\r\nSubject: ${subject}\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.com>\r\n\r\n${body}\r\n`,
  );
}
