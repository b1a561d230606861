import { execFile } from 'node:child_process';
import { renameSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { type ProxyProcess, seedAccounts, startProxyProcess } from '../../bench/setup.js';
import { withDeadline } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { opProviderConfig, type StartOPOptions, startOP, type TestOP } from '../../helpers/op.js';
import { connectPop3, type Pop3Client } from '../../helpers/pop3-client.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import { type SmtpSink, startSmtpSink } from '../../helpers/smtp-sink.js';
import { withCredentials } from '../../helpers/stack.js';
import { parseScrape } from '../observability/scrape.js';

/**
 * Operations tests run `serve` as a child process on a config file they rewrite, as an
 * operator does: listeners, accounts seeded into its store, sessions opened per protocol,
 * metrics read from its admin port.
 */

export const ROOT = join(import.meta.dirname, '..', '..', '..');
const CLI = join(ROOT, 'src', 'cli.ts');

export type Proto = 'imap' | 'smtp' | 'pop3';

export interface ListenerSpec {
  name: string;
  protocol: Proto;
  port: number;
  tls: 'none' | 'starttls' | 'implicit';
  cert_file?: string;
  key_file?: string;
}

/** A listener of `protocol` where login works without TLS (loopback only). */
export function cleartext(name: string, protocol: Proto, port: number): ListenerSpec {
  return { name, protocol, port, tls: 'none' };
}

/** The config file's text: JSON, which the YAML loader reads as it is. */
export function configText(c: {
  dataDir: string;
  key: string;
  level: string;
  listeners: ListenerSpec[];
  adminPort: number;
  adminPassword?: string;
  workers?: number;
  limits?: Record<string, unknown>;
  provider: Record<string, unknown>;
}): string {
  return `${JSON.stringify(
    {
      data_dir: c.dataDir,
      ...(c.workers ? { workers: c.workers } : {}),
      log: { level: c.level, format: 'json' },
      encryption: { key: c.key },
      listeners: c.listeners.map((l) => ({
        address: '127.0.0.1',
        ...l,
        ...(l.tls === 'none' ? { allow_cleartext_login: true, allow_from: ['127.0.0.1/32'] } : {}),
      })),
      limits: c.limits ?? {},
      admin: {
        address: '127.0.0.1',
        port: c.adminPort,
        ...(c.adminPassword ? { admin_password: c.adminPassword } : {}),
      },
      providers: { local: { preset: 'oidc', ...c.provider } },
    },
    null,
    2,
  )}\n`;
}

/** An upstream server on loopback, verified against `caFile`. */
export function upstreamAt(port: number, tls: 'implicit' | 'starttls', caFile?: string) {
  return { host: '127.0.0.1', port, tls, ...(caFile ? { ca_file: caFile } : {}), connect_timeout_seconds: 5 };
}

/** The provider entry for the test OP with implicit-TLS upstreams (Dovecot's, or a port nobody listens on). */
export function providerFor(
  op: TestOP,
  upstreams: { imap: number; smtp?: number; pop3?: number; caFile?: string },
  extra: Record<string, unknown> = {},
) {
  const at = (port: number) => upstreamAt(port, 'implicit', upstreams.caFile);
  return {
    ...opProviderConfig(op),
    upstream: at(upstreams.imap),
    upstreams: {
      ...(upstreams.smtp ? { smtp: at(upstreams.smtp) } : {}),
      ...(upstreams.pop3 ? { pop3: at(upstreams.pop3) } : {}),
    },
    ...extra,
  };
}

/** Written whole then renamed, as an editor or a deployment tool does, so no reload sees half a file. */
export function writeConfig(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text);
  renameSync(`${file}.tmp`, file);
}

export function serve(configFile: string): Promise<ProxyProcess> {
  return startProxyProcess(configFile, { cwd: ROOT, entry: CLI, nodeArgs: ['--import', 'tsx'] });
}

export interface CliRun {
  code: number | null;
  out: string;
  err: string;
}

/** `imap-oauth-proxy --config FILE …` as an operator types it; gives up after 60 s. */
export function cli(configFile: string, args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', CLI, '--config', configFile, ...args],
      { cwd: ROOT, timeout: 60_000 },
      (error, out, err) => resolve({ code: error ? (error.code as number | null) : 0, out, err }),
    );
  });
}

/** Accounts user0…user{n-1}@example.com, each with an app password and a grant from the OP. */
export async function seedUsers(configFile: string, op: TestOP, n: number) {
  const specs = [];
  for (let i = 0; i < n; i++) {
    const login = `user${i}@example.com`;
    const g = await op.mintGrant(login);
    specs.push({
      login,
      upstreamUser: login,
      refreshToken: g.refresh_token,
      accessToken: g.access_token,
      accessTokenExpiresAt: Date.now() + g.expires_in * 1000,
    });
  }
  const passwords = await seedAccounts(configFile, specs);
  return specs.map((s) => ({ login: s.login, password: passwords.get(s.login)! }));
}

export interface User {
  login: string;
  password: string;
}

/** One open client of any protocol: `check()` runs a harmless command and throws unless answered. */
export interface Client {
  readonly label: string;
  check(): Promise<void>;
  /** Logs in (a client still before login); throws unless the proxy says OK. */
  login(u: User): Promise<void>;
  /** The one line the server sends before it closes (without CRLF); throws if it stays open `ms`. */
  goodbye(ms: number): Promise<string>;
  close(): void;
}

let tags = 0;

export async function openClient(
  protocol: Proto,
  port: number,
  tls: boolean,
  label: string,
): Promise<Client> {
  if (protocol === 'imap') {
    const c = await withDeadline(RawImapClient.connect(port, { tls }), 5000, `${label}: connect`);
    const greeting = await c.readLine(5000);
    if (!greeting.startsWith('* OK')) throw new Error(`${label}: greeting ${greeting}`);
    const run = async (cmd: string) => {
      const tag = `t${++tags}`;
      const lines = await c.command(tag, cmd);
      const last = lines.at(-1) ?? '';
      if (!last.startsWith(`${tag} OK`)) throw new Error(`${label}: ${cmd.split(' ')[0]} → ${last}`);
    };
    return {
      label,
      check: () => run('NOOP'),
      login: (u) => run(`LOGIN ${u.login} ${u.password}`),
      goodbye: async (ms) => (await c.readToClose(ms)).replace(/\r\n$/, ''),
      close: () => c.close(),
    };
  }
  if (protocol === 'smtp') {
    const c: SmtpClient = await connectSmtp({
      host: '127.0.0.1',
      port,
      tls: tls ? 'implicit' : 'none',
      timeoutMs: 10_000,
    });
    const expect = async (line: string, code: number, what: string) => {
      const r = await c.command(line);
      if (r.code !== code) throw new Error(`${label}: ${what} → ${r.code} ${r.text}`);
    };
    return {
      label,
      check: () => expect('NOOP', 250, 'NOOP'),
      login: async (u) => {
        await expect('EHLO client.example', 250, 'EHLO');
        await expect(
          `AUTH PLAIN ${Buffer.from(`\0${u.login}\0${u.password}`).toString('base64')}`,
          235,
          'AUTH',
        );
      },
      goodbye: async (ms) => {
        const r = await c.reply(ms);
        await c.closed(ms);
        return `${r.code} ${r.text}`;
      },
      close: () => c.close(),
    };
  }
  const c: Pop3Client = await connectPop3({
    host: '127.0.0.1',
    port,
    tls: tls ? 'implicit' : 'none',
    timeoutMs: 10_000,
  });
  const expectOk = async (line: string, what: string) => {
    const r = await c.command(line);
    if (!r.startsWith('+OK')) throw new Error(`${label}: ${what} → ${r}`);
  };
  return {
    label,
    check: () => expectOk('STAT', 'STAT'),
    login: async (u) => {
      await expectOk(`USER ${u.login}`, 'USER');
      await expectOk(`PASS ${u.password}`, 'PASS');
    },
    goodbye: async (ms) => {
      const line = await c.line(ms);
      await c.closed(ms);
      return line;
    },
    close: () => c.close(),
  };
}

/** A sample of /metrics on the admin port (0 when the series is absent). */
export async function metric(
  adminPort: number,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  const samples = parseScrape(await res.text()).filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return samples.reduce((n, s) => n + s.value, 0);
}

/** The JSON log lines the process wrote so far whose msg is `msg`. */
export function logLines(p: ProxyProcess, msg: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const line of p.output().split('\n')) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line) as Record<string, unknown>;
    if (o.msg === msg) out.push(o);
  }
  return out;
}

/** Whether a connection to `port` on loopback is refused (nothing listening). */
export function refused(port: number): Promise<boolean> {
  return withDeadline(
    new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(false);
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
    }),
    5000,
    `a connection attempt to port ${port}`,
  );
}

export interface Upstreams {
  op: TestOP;
  sink: SmtpSink;
  dovecot: Dovecot;
  stop(): Promise<void>;
}

/** The OP, and Dovecot (IMAP, POP3, submission) introspecting its tokens and relaying to the recording sink. */
export async function startUpstreams(opOpts: StartOPOptions = {}): Promise<Upstreams> {
  const op = await startOP({ accessTokenTtl: 3600, ...opOpts });
  // Dovecot submission connects to its relay when a client logs in.
  const sink = await startSmtpSink();
  const dovecot = await startDovecot({
    introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
    relayPort: sink.port,
  }).catch(async (err: unknown) => {
    await sink.stop();
    await op.close();
    throw err;
  });
  return {
    op,
    sink,
    dovecot,
    stop: async () => {
      await dovecot.stop();
      await sink.stop();
      await op.close();
    },
  };
}
