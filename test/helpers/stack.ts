import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { generateAppPassword, hashAppPassword } from '../../src/accounts/passwords.js';
import { type ProxyApp, startProxy } from '../../src/app/app.js';
import { parseConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { createLogger, type Logger } from '../../src/log.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import { generateKeyLine } from '../../src/store/crypto.js';
import type { AccountRecord } from '../../src/store/types.js';
import { type Dovecot, startDovecot } from './dovecot.js';
import { startOP, storedGrant, type TestOP } from './op.js';
import { type SmtpSink, startSmtpSink } from './smtp-sink.js';

/**
 * The whole real chain on loopback: oidc-provider (OAuth server) ← Dovecot (upstream IMAP, POP3 and
 * SMTP submission, introspecting tokens at the OP; submission relays to a recording sink) ← the
 * proxy (started in-process through startProxy, exactly as `serve` does). Used by the
 * end-to-end, metrics, interop and benchmark suites.
 */

export interface StackOptions {
  upstreamTls?: 'implicit' | 'starttls';
  mechanism?: 'xoauth2' | 'oauthbearer' | 'auto';
  /** Keys replacing the generated provider's upstreams.smtp settings (e.g. another server, required_scope). */
  smtpUpstream?: (ctx: { op: TestOP; dovecot: Dovecot }) => Record<string, unknown>;
  /** Keys replacing the generated provider's upstreams.pop3 settings (e.g. another server, required_scope). */
  pop3Upstream?: (ctx: { op: TestOP; dovecot: Dovecot }) => Record<string, unknown>;
  accessTokenTtl?: number;
  /** Extra keys of the generated provider "local", one per line (e.g. "smtp_delivery: graph"). */
  providerYaml?: (ctx: { op: TestOP; dovecot: Dovecot }) => string;
  /** Extra YAML merged at the end of the generated config's top level (e.g. "limits: {...}"). */
  configYaml?: (ctx: { op: TestOP; dovecot: Dovecot }) => string;
  /** Bring your own OP / Dovecot (shared across tests); they are not stopped by close(). */
  op?: TestOP;
  dovecot?: Dovecot;
  logLevel?: string;
  /** Master key line "<id>:<base64>" (default: a fresh one); equal keys let stacks share a store. */
  encryptionKey?: string;
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
  /**
   * Ports of the proxy's listeners: IMAP STARTTLS (cleartext until upgraded), IMAP implicit TLS,
   * IMAP cleartext with login allowed; SMTP submission with STARTTLS and with implicit TLS;
   * POP3 with STLS and with implicit TLS.
   */
  ports: {
    starttls: number;
    imaps: number;
    plain: number;
    submission: number;
    submissions: number;
    pop3: number;
    pop3s: number;
    admin: number;
  };
  /** Where Dovecot submission relays accepted mail; undefined with a Dovecot passed in (it may relay nowhere). */
  sink: SmtpSink | undefined;
  /** The proxy's own (self-signed) certificate, for clients to trust. */
  proxyCaFile: string;
  /** Every log line the proxy wrote so far. */
  logs(): string;
  /**
   * Strings that must never be logged. addAccount registers its app password and tokens,
   * close() adds the grants' current tokens and the config's secrets, then scans logs().
   */
  secrets: Set<string>;
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
  let sink: SmtpSink | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'iop-stack-'));
  try {
    // The sink listens first: Dovecot is told its port at start.
    if (ownDovecot) sink = await startSmtpSink();
    dovecot =
      opts.dovecot ??
      (await startDovecot({
        introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
        users: [{ name: 'direct@example.com', password: 'direct-password' }],
        ...(sink ? { relayPort: sink.port } : {}),
      }));
    const upstreamTls = opts.upstreamTls ?? 'implicit';
    const d = dovecot;
    /** Dovecot's plaintext-start or implicit-TLS port of a protocol, as upstreamTls says, then the overrides. */
    const upstreamOn = (
      ports: { starttls: number; implicit: number },
      override: StackOptions['smtpUpstream'],
    ) => ({
      host: '127.0.0.1',
      port: ports[upstreamTls],
      tls: upstreamTls,
      ca_file: d.caFile,
      mechanism: opts.mechanism ?? 'auto',
      connect_timeout_seconds: 5,
      ...override?.({ op, dovecot: d }),
    });
    const smtpUpstream = upstreamOn(
      { starttls: dovecot.submissionPort, implicit: dovecot.submissionsPort },
      opts.smtpUpstream,
    );
    const pop3Upstream = upstreamOn(
      { starttls: dovecot.pop3Port, implicit: dovecot.pop3sPort },
      opts.pop3Upstream,
    );
    const yaml = `
data_dir: ${JSON.stringify(dir)}
log: { level: ${opts.logLevel ?? 'debug'}, format: json }
encryption: { key: "${opts.encryptionKey ?? generateKeyLine('k1')}" }
listeners:
  - { name: starttls, address: 127.0.0.1, port: 0, tls: starttls }
  - { name: imaps, address: 127.0.0.1, port: 0, tls: implicit }
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.1/32] }
  - { name: submission, protocol: smtp, address: 127.0.0.1, port: 0, tls: starttls }
  - { name: submissions, protocol: smtp, address: 127.0.0.1, port: 0, tls: implicit }
  - { name: pop3, protocol: pop3, address: 127.0.0.1, port: 0, tls: starttls }
  - { name: pop3s, protocol: pop3, address: 127.0.0.1, port: 0, tls: implicit }
admin: { address: 127.0.0.1, port: 0, public_url: "https://proxy.example.test" }
providers:
  local:
    preset: oidc
    issuer: ${op.issuer}
    client_id: ${op.client.id}
    client_secret: ${op.client.secret}
    allow_insecure_http: true
    timeout_seconds: 5
${(opts.providerYaml?.({ op, dovecot: d }) ?? '')
  .split('\n')
  .filter((l) => l.trim() !== '')
  .map((l) => `    ${l}`)
  .join('\n')}
    upstream:
      host: 127.0.0.1
      port: ${upstreamTls === 'implicit' ? dovecot.imapsPort : dovecot.imapPort}
      tls: ${upstreamTls}
      ca_file: ${JSON.stringify(dovecot.caFile)}
      mechanism: ${opts.mechanism ?? 'auto'}
      connect_timeout_seconds: 5
    upstreams:
      smtp: ${JSON.stringify(smtpUpstream)}
      pop3: ${JSON.stringify(pop3Upstream)}
${opts.configYaml?.({ op, dovecot }) ?? ''}
`;
    const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
    const chunks: string[] = [];
    const logSink = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(String(chunk));
        cb();
      },
    });
    const log = createLogger({ level: config.log.level, format: 'json', destination: logSink });
    const metrics = createMetrics();
    const app = await startProxy(config, { log, metrics, version: 'test' });
    const secrets = new Set<string>([op.client.secret, op.introspection.secret]);
    if (config.encryption.key) secrets.add(config.encryption.key.split(':')[1]!);
    const accountIds: number[] = [];
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
        submission: app.addresses.submission!.port,
        submissions: app.addresses.submissions!.port,
        pop3: app.addresses.pop3!.port,
        pop3s: app.addresses.pop3s!.port,
        admin: app.adminAddress.port,
      },
      sink,
      proxyCaFile: join(dir, 'tls', 'selfsigned.crt'),
      logs: () => chunks.join(''),
      secrets,
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
        accountIds.push(account.id);
        const password = generateAppPassword();
        secrets.add(password);
        await app.store.addAppPassword(account.id, 'test', await hashAppPassword(password), 'test');
        let refreshToken: string | null = null;
        let accessToken: string | null = null;
        if ((o.grant ?? 'refresh_token') === 'refresh_token') {
          const t = await op.mintGrant(upstreamUser);
          refreshToken = t.refresh_token;
          accessToken = t.access_token;
          secrets.add(refreshToken);
          secrets.add(accessToken);
          await app.store.putGrant(account.id, storedGrant(t), 'test');
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
        // Tokens the proxy refreshed or rotated during the run count too.
        for (const id of accountIds) {
          const g = await app.store.getGrant(id).catch(() => null);
          if (g?.refreshToken) secrets.add(g.refreshToken);
          if (g?.accessToken) secrets.add(g.accessToken);
        }
        await app.close({ drainMs: 0 });
        if (ownDovecot) await d.stop();
        await sink?.stop();
        if (ownOp) await op.close();
        rmSync(dir, { recursive: true, force: true });
        assertNoSecretsLogged(chunks.join(''), secrets);
      },
    };
  } catch (err) {
    if (ownDovecot) await dovecot?.stop();
    await sink?.stop();
    if (ownOp) await op.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Throws naming the log line (never the secret) where any registered secret appears. */
export function assertNoSecretsLogged(logs: string, secrets: Iterable<string>): void {
  const lines = logs.split('\n');
  const found: string[] = [];
  let i = 0;
  for (const secret of secrets) {
    i++;
    // Short strings would match by accident; every real secret here is long.
    if (secret.length < 8) continue;
    const at = lines.findIndex((l) => l.includes(secret));
    if (at >= 0)
      found.push(`secret #${i} (${secret.length} chars) in log line ${at + 1}: ${msgOf(lines[at]!)}`);
  }
  if (found.length > 0) throw new Error(`secrets found in the proxy's logs:\n${found.join('\n')}`);
}

function msgOf(line: string): string {
  try {
    const o = JSON.parse(line) as { msg?: unknown };
    return JSON.stringify(o.msg ?? '');
  } catch {
    return '(not JSON)';
  }
}

/** An introspection URL with its client credentials in it, as Dovecot's oauth2 passdb takes them. */
export function withCredentials(url: string, id: string, secret: string): string {
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

/** logins_total{protocol,result} of one stack. */
export async function loginCount(s: Stack, protocol: string, result: string): Promise<number> {
  const v = (await s.metrics.logins.get()).values;
  return v.find((x) => x.labels.protocol === protocol && x.labels.result === result)?.value ?? 0;
}

/** upstream_auths_total{protocol,result} of one stack, over every mechanism unless one is named. */
export async function upstreamAuthCount(
  s: Stack,
  protocol: string,
  result: string,
  mechanism?: string,
): Promise<number> {
  const v = (await s.metrics.upstreamAuths.get()).values;
  return v
    .filter((x) => x.labels.protocol === protocol && x.labels.result === result)
    .filter((x) => mechanism === undefined || x.labels.mechanism === mechanism)
    .reduce((n, x) => n + x.value, 0);
}

/** Replaces the stored access token, or with null leaves it expired, so the next login must refresh. */
export async function setStoredToken(s: Stack, a: TestAccount, accessToken: string | null): Promise<void> {
  const g = await s.app.store.getGrant(a.account.id);
  if (!g) throw new Error(`account ${a.login} has no grant to change`);
  await s.app.store.putGrant(
    a.account.id,
    { ...g, accessToken, accessTokenExpiresAt: accessToken ? Date.now() + 3_600_000 : Date.now() - 60_000 },
    'test',
  );
}
