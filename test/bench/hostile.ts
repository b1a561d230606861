import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer, type Server } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyLine } from '../../src/store/crypto.js';
import type { Dovecot } from '../helpers/dovecot.js';
import type { TestOP } from '../helpers/op.js';
import type { Auth, Target } from './imap.js';
import type { TurnsResult } from './loadgen.js';
import { type Generator, startGenerator, treeCpuSeconds, treeRss } from './procs.js';
import { type ProxyProcess, seedAccounts, startProxyProcess, writeProxyConfig } from './setup.js';

/**
 * Scenarios with hostile or long-running load: trickling unauthenticated connections, a password
 * spray, and the soak (logins of every protocol, idle sessions, refreshes and reloads together).
 * Each runs its own proxy process so the default limits and the limiter's state are its own.
 */

export interface Env {
  op: TestOP;
  dovecot: Dovecot;
  gen: Generator;
  quick: boolean;
  proxyOpts: { cwd: string; entry?: string; nodeArgs?: string[] };
  log(s: string): void;
}

export const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]! : Number.NaN;
};
export const r2 = (x: number) => Math.round(x * 100) / 100;
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const mb = (bytes: number) => r2(bytes / 2 ** 20);
const load = () => loadavg().map((x) => r2(x)) as [number, number, number];

/** The legitimate client's address: Linux routes all of 127/8 to lo. */
const OTHER_ADDRESS = '127.0.0.2';

export interface Running {
  proxy: ProxyProcess;
  ports: { plain: number; imaps: number; submissions: number; pop3s: number; admin: number };
  password: string;
}

/**
 * Distinct free loopback ports, one per name: all held open at once while they are picked (after
 * heavy connection churn, ports picked one after another came back twice).
 */
export async function freePorts<K extends string>(names: readonly K[]): Promise<Record<K, number>> {
  const servers = await Promise.all(
    names.map(
      () =>
        new Promise<Server>((resolve, reject) => {
          const srv = createServer();
          srv.once('error', reject);
          srv.listen(0, '127.0.0.1', () => resolve(srv));
        }),
    ),
  );
  const ports = servers.map((srv) => (srv.address() as AddressInfo).port);
  await Promise.all(servers.map((srv) => new Promise((r) => srv.close(r))));
  return Object.fromEntries(names.map((n, i) => [n, ports[i]!])) as Record<K, number>;
}

type Grant = Awaited<ReturnType<TestOP['mintGrant']>>;

/** Config for a `serve` child in `dir` (IMAP, and SMTP and POP3 when asked) and the `bench` account on `grant`. */
export async function startBenchProxy(
  env: Pick<Env, 'op' | 'dovecot' | 'proxyOpts'>,
  dir: string,
  o: { defaultLimits: boolean; allProtocols?: boolean; grant: Grant },
): Promise<Running> {
  const d = env.dovecot;
  const ports = await freePorts(['plain', 'imaps', 'submissions', 'pop3s', 'admin'] as const);
  const configFile = writeProxyConfig({
    dir,
    workers: 1,
    plainPort: ports.plain,
    imapsPort: ports.imaps,
    adminPort: ports.admin,
    issuer: env.op.issuer,
    clientId: env.op.client.id,
    clientSecret: env.op.client.secret,
    upstream: { port: d.imapsPort, caFile: d.caFile },
    ...(o.allProtocols
      ? {
          smtp: { listenPort: ports.submissions, upstream: { port: d.submissionsPort, caFile: d.caFile } },
          pop3: { listenPort: ports.pop3s, upstream: { port: d.pop3sPort, caFile: d.caFile } },
        }
      : {}),
    encryptionKey: generateKeyLine('k1'),
    defaultLimits: o.defaultLimits,
  });
  const pw = await seedAccounts(configFile, [
    {
      login: 'bench',
      upstreamUser: 'bench@example.com',
      refreshToken: o.grant.refresh_token,
      accessToken: o.grant.access_token,
      accessTokenExpiresAt: Date.now() + o.grant.expires_in * 1000,
    },
  ]);
  const proxy = await startProxyProcess(configFile, env.proxyOpts);
  return { proxy, ports, password: pw.get('bench')! };
}

async function withProxy<T>(
  env: Env,
  name: string,
  o: { defaultLimits: boolean; allProtocols?: boolean },
  fn: (r: Running) => Promise<T>,
): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), `iop-bench-${name}-`));
  const grant = await env.op.mintGrant('bench@example.com');
  const r = await startBenchProxy(env, dir, { ...o, grant });
  try {
    return await fn(r);
  } finally {
    await r.proxy.stop(30_000);
    rmSync(dir, { recursive: true, force: true });
  }
}

type LoginsResult = { count: number; errors: number; firstError?: string; latenciesMs: number[] };

/** Sequential logins of the real user from the other address. */
function legitLogins(env: Env, r: Running, count: number, durationMs = 300_000) {
  const auth: Auth = { kind: 'login', user: 'bench', pass: r.password };
  const target: Target = { port: r.ports.plain, tls: false, localAddress: OTHER_ADDRESS };
  return env.gen.run<LoginsResult>({
    kind: 'logins',
    target,
    auth,
    concurrency: 1,
    durationMs,
    maxCount: count,
  });
}

/** Sum of a metric's samples whose labels contain `match` (`''` for all). */
export async function metric(adminPort: number, name: string, match = ''): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, 'gm')))
    if ((m[1] ?? '').includes(match)) sum += Number(m[2]);
  return sum;
}

export async function trickle(env: Env) {
  const slots = env.quick ? 500 : 5000;
  const logins = env.quick ? 20 : 150;
  const rampMs = env.quick ? 1000 : 5000;
  return withProxy(env, 'trickle', { defaultLimits: true }, async (r) => {
    env.log(`trickle: ${logins} unloaded logins from ${OTHER_ADDRESS}`);
    await legitLogins(env, r, 5);
    const unloaded = await legitLogins(env, r, logins);
    const rss0 = treeRss(r.proxy.pid);
    env.log(`trickle: ${slots} trickling connections from 127.0.0.1, ${logins} logins from ${OTHER_ADDRESS}`);
    const attacker = startGenerator();
    try {
      // The trickle outlives the loaded logins; it ends at its own deadline.
      const durationMs = env.quick ? 10_000 : 60_000;
      const load0 = load();
      const tr = attacker.run<{
        admitted: number;
        refused: number;
        connectErrors: number;
        closedByServer: number;
        noops: number;
        maxOpen: number;
        goodbyes: Record<string, number>;
      }>({
        kind: 'trickle',
        target: { port: r.ports.plain, tls: false, localAddress: '127.0.0.1' },
        slots,
        rampMs,
        everyMs: 3000,
        retryMs: 10_000,
        durationMs,
      });
      // A fixed window so the ramp is complete before the loaded logins begin (not synchronisation).
      await new Promise((res) => setTimeout(res, rampMs + 1000));
      const loaded = await legitLogins(env, r, logins, durationMs - rampMs - 2000);
      const rss = treeRss(r.proxy.pid);
      const t = await tr;
      const rejections = await metric(r.ports.admin, 'imap_proxy_preauth_rejections_total');
      return {
        slots,
        admitted: t.admitted,
        refused: t.refused,
        connectErrors: t.connectErrors,
        closedByServer: t.closedByServer,
        maxOpenAtOnce: t.maxOpen,
        noops: t.noops,
        goodbyes: t.goodbyes,
        preauthRejections: rejections,
        legit: {
          unloaded: {
            n: unloaded.count,
            errors: unloaded.errors,
            p50ms: r2(pct(unloaded.latenciesMs, 50)),
            p99ms: r2(pct(unloaded.latenciesMs, 99)),
          },
          loaded: {
            n: loaded.count,
            errors: loaded.errors,
            ...(loaded.firstError ? { firstError: loaded.firstError } : {}),
            p50ms: r2(pct(loaded.latenciesMs, 50)),
            p99ms: r2(pct(loaded.latenciesMs, 99)),
          },
        },
        p99Ratio: r2(pct(loaded.latenciesMs, 99) / pct(unloaded.latenciesMs, 99)),
        targetP99Ratio: 2,
        proxyRssMB: { before: mb(rss0), loaded: mb(rss) },
        loadAverage: { before: load0, after: load() },
      };
    } finally {
      await attacker.stop();
    }
  });
}

/** A login of the real user every `everyMs` until `stop` resolves (latencies and errors). */
async function paced(env: Env, r: Running, everyMs: number, stop: Promise<unknown>): Promise<LoginsResult> {
  let done = false;
  void stop.then(() => {
    done = true;
  });
  const all: LoginsResult = { count: 0, errors: 0, latenciesMs: [] };
  while (!done) {
    const u = await legitLogins(env, r, 1);
    all.count += u.count;
    all.errors += u.errors;
    all.firstError ??= u.firstError;
    all.latenciesMs.push(...u.latenciesMs);
    await Promise.race([stop, new Promise((res) => setTimeout(res, everyMs))]);
  }
  return all;
}

const summary = (u: LoginsResult) => ({
  ok: u.count,
  errors: u.errors,
  ...(u.firstError ? { firstError: u.firstError } : {}),
  p50ms: r2(pct(u.latenciesMs, 50)),
  p99ms: r2(pct(u.latenciesMs, 99)),
});

export async function spray(env: Env) {
  const attempts = env.quick ? 1000 : 10_000;
  return withProxy(env, 'spray', { defaultLimits: true }, async (r) => {
    await legitLogins(env, r, 5);
    const unloaded = await legitLogins(env, r, 30);
    // The proxy's own CPU without the attack, the real user logging in at the same pace: what the attack adds is the difference.
    const everyMs = env.quick ? 1000 : 10_000;
    const quietSeconds = env.quick ? 5 : 120;
    const quiet0 = treeCpuSeconds(r.proxy.pid);
    await paced(env, r, everyMs, new Promise((res) => setTimeout(res, quietSeconds * 1000)));
    const quietShare = (treeCpuSeconds(r.proxy.pid) - quiet0) / quietSeconds;
    const metric0 = await metric(r.ports.admin, 'imap_proxy_logins_total', 'bad_credentials');
    env.log(`spray: ${attempts} wrong passwords from 127.0.0.1 over 100 connections`);
    const attacker = startGenerator();
    try {
      const load0 = load();
      const cpu0 = treeCpuSeconds(r.proxy.pid);
      const t0 = performance.now();
      // The tarpit sets the attack's pace (100 connections per tarpit_seconds): 10,000 guesses take ~17 min.
      const sprayed = attacker.run<{
        attempts: number;
        badCredentials: number;
        limited: number;
        refusedAtAccept: number;
        other: number;
        connections: number;
        elapsed: number;
      }>(
        {
          kind: 'spray',
          target: { port: r.ports.plain, tls: false, localAddress: '127.0.0.1' },
          connections: 100,
          attempts,
          users: 500,
          durationMs: env.quick ? 12_000 : 1_200_000,
        },
        1_300_000,
      );
      // The real user logs in throughout the attack, every 1 s (quick) or 10 s.
      const real = paced(env, r, everyMs, sprayed);
      const s = await sprayed;
      const wall = (performance.now() - t0) / 1000;
      const cpu = treeCpuSeconds(r.proxy.pid) - cpu0;
      const u = await real;
      const checks = (await metric(r.ports.admin, 'imap_proxy_logins_total', 'bad_credentials')) - metric0;
      const tarpit = (result: string) =>
        metric(r.ports.admin, 'imap_proxy_tarpit_connections_total', `result="${result}"`);
      return {
        ...s,
        elapsed: r2(s.elapsed),
        guessesPerSecond: r2(s.attempts / s.elapsed),
        proxyCpuSeconds: r2(cpu),
        proxyCpuShareOfCore: r3(cpu / wall),
        withoutAttackCpuShareOfCore: r3(quietShare),
        attackCpuShareOfCore: r3(cpu / wall - quietShare),
        proxyCpuMsPerAttempt: r2((cpu * 1000) / Math.max(1, s.attempts)),
        targetCpuShareOfCore: 0.01,
        passwordChecks: checks,
        tarpit: { held: await tarpit('held'), full: await tarpit('full') },
        realUser: { unloaded: summary(unloaded), duringAttack: summary(u) },
        preauthRejections: await metric(r.ports.admin, 'imap_proxy_preauth_rejections_total'),
        loadAverage: { before: load0, after: load() },
      };
    } finally {
      await attacker.stop();
    }
  });
}

/** The proxy's first warning and error log lines (they carry no secrets: its logger redacts them). */
function warnings(p: ProxyProcess): string[] {
  return p
    .output()
    .split('\n')
    .filter((l) => /"level":(40|50)/.test(l) && !l.includes('SELF-SIGNED'))
    .slice(0, 5)
    .map((l) => l.slice(0, 400));
}

/** Open descriptors of a process and its descendants. */
function treeFds(pid: number): number {
  let n = 0;
  const visit = (p: number) => {
    try {
      n += readdirSync(`/proc/${p}/fd`).length;
      const kids = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(/\s+/) : []) visit(Number(k));
    } catch {}
  };
  visit(pid);
  return n;
}

export async function soak(env: Env) {
  const seconds = env.quick ? 60 : 600;
  // Below Dovecot's default_process_limit (100 imap processes), or its new logins are refused.
  const idle = env.quick ? 20 : 80;
  return withProxy(env, 'soak', { defaultLimits: false, allProtocols: true }, async (r) => {
    const holder = startGenerator();
    try {
      const imap: Target = { port: r.ports.plain, tls: false };
      const auth = { user: 'bench', pass: r.password };
      const held = await holder.run<{ opened: number; failed: number; firstError?: string }>({
        kind: 'hold',
        target: imap,
        auths: [{ kind: 'login', ...auth }],
        open: idle,
      });
      env.log(`soak ${seconds} s: ${held.opened} idle sessions, logins of every protocol, SIGHUP every 15 s`);
      const tokens0 = env.op.tokenRequests();
      const reloads0 = await metric(r.ports.admin, 'imap_proxy_config_reloads_total', 'success');
      const samples: Array<{ t: number; rssMB: number; fds: number }> = [];
      const t0 = performance.now();
      const sample = () =>
        samples.push({
          t: r2((performance.now() - t0) / 1000),
          rssMB: mb(treeRss(r.proxy.pid)),
          fds: treeFds(r.proxy.pid),
        });
      let hups = 0;
      const sampler = setInterval(sample, 5000);
      const hupper = setInterval(() => {
        process.kill(r.proxy.pid, 'SIGHUP');
        hups++;
      }, 15_000);
      const tally = { imap: [0, 0], smtp: [0, 0], pop3: [0, 0] } as Record<string, [number, number]>;
      let firstError: string | undefined;
      const add = (k: string, ok: number, bad: number, err?: string) => {
        tally[k]![0] += ok;
        tally[k]![1] += bad;
        firstError ??= err;
      };
      try {
        while (performance.now() - t0 < seconds * 1000) {
          const i = await env.gen.run<LoginsResult>({
            kind: 'logins',
            target: imap,
            auth: { kind: 'login', ...auth },
            concurrency: 2,
            durationMs: 5000,
            maxCount: 20,
          });
          add('imap', i.count, i.errors, i.firstError);
          const [s] = await env.gen.run<TurnsResult[]>({
            kind: 'smtpAuths',
            legs: [{ target: { port: r.ports.submissions, tls: true }, auth }],
            count: 5,
          });
          add('smtp', s!.count, s!.errors, s!.firstError);
          const [p] = await env.gen.run<TurnsResult[]>({
            kind: 'pop3Logins',
            legs: [{ target: { port: r.ports.pop3s, tls: true }, auth }],
            count: 5,
          });
          add('pop3', p!.count, p!.errors, p!.firstError);
        }
      } finally {
        clearInterval(sampler);
        clearInterval(hupper);
      }
      sample();
      const ping = await holder.run<{ held: number; answered: number; failed: number; firstError?: string }>({
        kind: 'pingHeld',
      });
      // The first sample after warm-up (the first 10 % of the run) against the last.
      const first = samples.find((s) => s.t >= seconds / 10) ?? samples[0]!;
      const last = samples.at(-1)!;
      // Medians of the second and the last tenth of the run: one sample can land on a GC peak.
      const median = (from: number, to: number, k: 'rssMB' | 'fds') =>
        pct(
          samples.filter((s) => s.t >= from * seconds && s.t <= to * seconds).map((s) => s[k]),
          50,
        );
      const windows = (k: 'rssMB' | 'fds') => {
        const a = median(0.1, 0.2, k);
        const b = median(0.9, 1.1, k);
        return { secondTenth: a, lastTenth: b, change: r2(b / a - 1) };
      };
      return {
        seconds,
        logins: Object.fromEntries(Object.entries(tally).map(([k, [ok, bad]]) => [k, { ok, errors: bad }])),
        ...(firstError ? { firstError, proxyWarnings: warnings(r.proxy) } : {}),
        sighups: hups,
        reloadsApplied:
          (await metric(r.ports.admin, 'imap_proxy_config_reloads_total', 'success')) - reloads0,
        tokenRequests: env.op.tokenRequests() - tokens0,
        idle: { opened: held.opened, answeredAtEnd: ping.answered, dropped: ping.held - ping.answered },
        rssMB: { first: first.rssMB, last: last.rssMB, change: r2(last.rssMB / first.rssMB - 1) },
        fds: { first: first.fds, last: last.fds, change: r2(last.fds / first.fds - 1) },
        medians: { rssMB: windows('rssMB'), fds: windows('fds') },
        targetChange: 0.1,
        samples,
        loadAverage: load(),
      };
    } finally {
      await holder.run({ kind: 'close' }, 30_000).catch(() => undefined);
      await holder.stop();
    }
  });
}
