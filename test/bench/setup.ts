import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateAppPassword, hashAppPassword } from '../../src/accounts/passwords.js';
import { loadConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log.js';
import { Keyring } from '../../src/store/crypto.js';
import { openStore } from '../../src/store/index.js';

/**
 * Shared by the benchmark and the cluster test: writes a proxy config for a child-process
 * `serve`, seeds accounts straight into its SQLite store, and runs/stops the proxy by PID.
 */

export interface ProxyConfigSpec {
  dir: string;
  workers: number;
  plainPort: number;
  imapsPort: number;
  adminPort: number;
  issuer: string;
  clientId: string;
  clientSecret: string;
  upstream: { port: number; caFile: string };
  /** An SMTP submission listener (implicit TLS) and the upstream submission server behind it. */
  smtp?: { listenPort: number; upstream: { port: number; caFile: string } };
  /** A POP3 listener (implicit TLS) and the upstream POP3 server behind it. */
  pop3?: { listenPort: number; upstream: { port: number; caFile: string } };
  encryptionKey: string;
  /** The proxy's default limits (pre-auth bounds, limiter) instead of the benchmark's lifted caps. */
  defaultLimits?: boolean;
}

/** One `providers.local.upstreams.<protocol>` entry: implicit TLS, XOAUTH2, the CA that signed it. */
function upstreamEntry(protocol: string, u: { port: number; caFile: string }): string {
  return `      ${protocol}:
        host: 127.0.0.1
        port: ${u.port}
        tls: implicit
        ca_file: ${JSON.stringify(u.caFile)}
        mechanism: xoauth2
        connect_timeout_seconds: 30
        auth_timeout_seconds: 60
`;
}

export function writeProxyConfig(s: ProxyConfigSpec): string {
  const file = join(s.dir, 'proxy.yaml');
  writeFileSync(
    file,
    `data_dir: ${JSON.stringify(s.dir)}
workers: ${s.workers}
log: { level: info, format: json }
encryption: { key: "${s.encryptionKey}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: ${s.plainPort}, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.0/8] }
  - { name: imaps, address: 127.0.0.1, port: ${s.imapsPort}, tls: implicit }
${s.smtp ? `  - { name: submissions, protocol: smtp, address: 127.0.0.1, port: ${s.smtp.listenPort}, tls: implicit }\n` : ''}${s.pop3 ? `  - { name: pop3s, protocol: pop3, address: 127.0.0.1, port: ${s.pop3.listenPort}, tls: implicit }\n` : ''}${s.defaultLimits ? '' : 'limits: { max_connections: 100000, max_sessions_per_account: 100000, login_timeout_seconds: 120, preauth_per_address: 100000, preauth_total: 100000 }\n'}admin: { address: 127.0.0.1, port: ${s.adminPort} }
providers:
  local:
    preset: oidc
    issuer: ${s.issuer}
    client_id: ${s.clientId}
    client_secret: ${s.clientSecret}
    allow_insecure_http: true
    timeout_seconds: 30
    upstream:
      host: 127.0.0.1
      port: ${s.upstream.port}
      tls: implicit
      ca_file: ${JSON.stringify(s.upstream.caFile)}
      mechanism: xoauth2
      connect_timeout_seconds: 30
      auth_timeout_seconds: 60
${s.smtp || s.pop3 ? '    upstreams:\n' : ''}${s.smtp ? upstreamEntry('smtp', s.smtp.upstream) : ''}${s.pop3 ? upstreamEntry('pop3', s.pop3.upstream) : ''}`,
  );
  return file;
}

export interface SeedSpec {
  login: string;
  upstreamUser: string;
  refreshToken: string;
  accessToken: string;
  accessTokenExpiresAt: number;
  /** Per-account upstream (e.g. one of several fake upstream processes). */
  upstreamPort?: number;
}

/** Creates accounts with one app password each and an active refresh-token grant; returns the passwords. */
export async function seedAccounts(configFile: string, specs: SeedSpec[]): Promise<Map<string, string>> {
  const { config } = loadConfig(configFile);
  const store = await openStore(
    config,
    Keyring.fromConfig(config.encryption, config.data_dir, silentLogger),
    silentLogger,
  );
  const passwords = new Map<string, string>();
  try {
    for (const s of specs) {
      const account = await store.createAccount(
        {
          login: s.login,
          upstreamUser: s.upstreamUser,
          provider: 'local',
          ...(s.upstreamPort ? { upstreamOverride: { port: s.upstreamPort } } : {}),
        },
        'bench',
      );
      const password = generateAppPassword();
      await store.addAppPassword(account.id, 'bench', await hashAppPassword(password), 'bench');
      await store.putGrant(
        account.id,
        {
          kind: 'refresh_token',
          status: 'active',
          refreshToken: s.refreshToken,
          accessToken: s.accessToken,
          accessTokenExpiresAt: s.accessTokenExpiresAt,
          scope: null,
          lastRefreshAt: Date.now(),
          lastError: null,
        },
        'bench',
      );
      passwords.set(s.login, password);
    }
  } finally {
    await store.close();
  }
  return passwords;
}

// One helper for every suite; re-exported for the bench's own modules.
export { freePort } from '../helpers/ports.js';

export interface ProxyProcess {
  pid: number;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
  output(): string;
  /** SIGTERM, then SIGKILL after `ms`; resolves on exit. */
  stop(ms?: number): Promise<number | string>;
}

const READY_LINE = '"msg":"ready"';

/** `serve --config FILE` as a child process; resolves once it logs "ready". */
export async function startProxyProcess(
  configFile: string,
  opts: { cwd: string; entry?: string; readyMs?: number; nodeArgs?: string[] },
): Promise<ProxyProcess> {
  const entry = opts.entry ?? join(opts.cwd, 'dist', 'cli.js');
  const args = [...(opts.nodeArgs ?? []), entry, 'serve', '--config', configFile];
  const child = spawn(process.execPath, args, { cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let outBytes = 0;
  const keep = (d: Buffer) => {
    // Bounded: a long run logs a line per session; keep the head, which has the start-up story.
    if (outBytes < 4_000_000) out += d.toString();
    outBytes += d.length;
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  const pid = child.pid ?? 0;
  const stop = async (ms = 20_000) => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), ms);
    const r = await exited;
    clearTimeout(t);
    return r;
  };
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => fail(new Error('proxy did not become ready')), opts.readyMs ?? 60_000);
    const onData = () => {
      if (out.includes(READY_LINE)) {
        clearTimeout(t);
        child.stdout.off('data', onData);
        resolve();
      }
    };
    function fail(err: Error) {
      clearTimeout(t);
      void stop(1000).then(() => reject(new Error(`${err.message}\n${out.slice(-4000)}`)));
    }
    child.stdout.on('data', onData);
    void exited.then((code) => fail(new Error(`proxy exited (${code}) before ready`)));
  });
  return { pid, exited, output: () => out, stop };
}
