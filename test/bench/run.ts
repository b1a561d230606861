import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { generateKeyLine } from '../../src/store/crypto.js';
import { type Dovecot, startDovecot } from '../helpers/dovecot.js';
import { startOP, type TestOP } from '../helpers/op.js';
import { startSmtpSink } from '../helpers/smtp-sink.js';
import { graph, graphTable } from './graph.js';
import { freePorts, pct, r2, soak, spray, startBenchProxy, trickle } from './hostile.js';
import { type Auth, BenchConn } from './imap.js';
import type { TurnsResult } from './loadgen.js';
import type { Pop3Auth } from './pop3.js';
import {
  type Generator,
  runJob,
  startFakeProc,
  startGenerator,
  startHaproxy,
  treeCpuSeconds,
  treeRss,
} from './procs.js';
import { freePort, seedAccounts, startProxyProcess, writeProxyConfig } from './setup.js';
import { benchMessage, type SmtpAuth } from './smtp.js';

/**
 * `npm run bench [-- --quick] [-- --out FILE] [-- --only throughput,latency,rate,storm,concurrency,
 * smtp-throughput,smtp-latency,smtp-rate,pop3-throughput,pop3-latency,trickle,spray,soak,graph]`:
 * proxy vs direct (and haproxy TCP) in one run. The proxy runs as `node dist/cli.js serve`; load
 * comes from forked generator processes. BENCH_PROXY_NODE_ARGS (space-separated) is passed to the
 * proxy's node, e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof` to profile one scenario.
 */

const ROOT = join(import.meta.dirname, '..', '..');
const args = process.argv.slice(2);
const QUICK = args.includes('--quick');
const OUT =
  args[args.indexOf('--out') + 1] && args.includes('--out')
    ? args[args.indexOf('--out') + 1]!
    : 'bench-results.json';
const STEPS = (process.env.BENCH_STEPS ?? (QUICK ? '100,300' : '1000,5000,10000,15000,20000'))
  .split(',')
  .map(Number);
const SIZES = { big: QUICK ? 4 << 20 : 32 << 20, small: 4096, smallCount: QUICK ? 200 : 1000 };
const LOGIN_N = QUICK ? 40 : 200;
const LOGIN_WARMUPS = QUICK ? 5 : 20;
const RATE_MS = QUICK ? 1000 : 3000;
const STORM = QUICK ? 200 : 1000;
const SMTP = {
  big: QUICK ? 2 << 20 : 10 << 20,
  repeats: QUICK ? 2 : 5,
  auths: QUICK ? 15 : 200,
  warmups: QUICK ? 5 : 20,
  small: 2048,
  rateMs: QUICK ? 1000 : 4000,
};
const POP3 = {
  big: QUICK ? 4 << 20 : 32 << 20,
  repeats: QUICK ? 2 : 5,
  logins: QUICK ? 15 : 200,
  warmups: QUICK ? 5 : 20,
};

const SCENARIOS = [
  'throughput',
  'latency',
  'rate',
  'storm',
  'concurrency',
  'smtp-throughput',
  'smtp-latency',
  'smtp-rate',
  'pop3-throughput',
  'pop3-latency',
  'trickle',
  'spray',
  'soak',
  'graph',
] as const;
type Scenario = (typeof SCENARIOS)[number];
// The soak takes 10 minutes (60 s with --quick): it runs only when named.
const ONLY = args.includes('--only')
  ? (args[args.indexOf('--only') + 1] ?? '').split(',')
  : SCENARIOS.filter((s) => s !== 'soak');
const unknown = ONLY.filter((s) => !(SCENARIOS as readonly string[]).includes(s));
if (unknown.length) {
  process.stderr.write(`unknown scenario(s) ${unknown.join(', ')}; known: ${SCENARIOS.join(', ')}\n`);
  process.exit(2);
}
const wants = (s: Scenario) => ONLY.includes(s);
const r3 = (x: number) => Math.round(x * 1000) / 1000;
/** BENCH_FROM_SOURCE=1 runs the proxy from src/ through tsx (the smoke test does not need a build). */
const EXTRA_NODE_ARGS = (process.env.BENCH_PROXY_NODE_ARGS ?? '').split(' ').filter(Boolean);
const PROXY = process.env.BENCH_FROM_SOURCE
  ? { cwd: ROOT, entry: join(ROOT, 'src', 'cli.ts'), nodeArgs: ['--import', 'tsx', ...EXTRA_NODE_ARGS] }
  : { cwd: ROOT, nodeArgs: EXTRA_NODE_ARGS };
const log = (s: string) => process.stderr.write(`[bench] ${s}\n`);

interface Ctx {
  dir: string;
  op: TestOP;
  dovecot: Dovecot;
  user: string;
  token: string;
  password: string;
  proxy: { plain: number; imaps: number; submissions: number; pop3s: number };
  proxyPid: number;
  haproxy?: { plain: number; imaps: number; submissions: number; pop3s: number };
  /** Dovecot's plain-password user: the direct, non-OAuth SMTP and POP3 baseline. */
  direct: SmtpAuth & Pop3Auth;
  /** One generator process runs the jobs one after another (a fork per job costs seconds under load). */
  gen: Generator;
}

async function seedMail(d: Dovecot, user: string, token: string): Promise<void> {
  const c = await BenchConn.open({ port: d.imapPort, tls: false });
  await c.greeting();
  await c.login({ kind: 'xoauth2', user, token });
  await c.command('C1', 'CREATE big');
  await c.command('C2', 'CREATE small');
  const message = (size: number, n: number) => {
    const head = `From: bench@example.com\r\nTo: ${user}\r\nSubject: bench ${n}\r\nMessage-ID: <b${n}@example.com>\r\n\r\n`;
    const line = `${'x'.repeat(76)}\r\n`;
    return Buffer.from(head + line.repeat(Math.max(1, Math.floor((size - head.length) / line.length))));
  };
  const big = message(SIZES.big, 0);
  c.write(`A0 APPEND big {${big.length}+}\r\n`);
  c.write(big);
  c.write('\r\n');
  await c.tagged('A0');
  for (let i = 1; i <= SIZES.smallCount; i++) {
    const m = message(SIZES.small, i);
    c.write(`A${i} APPEND small {${m.length}+}\r\n`);
    c.write(m);
    c.write('\r\n');
  }
  for (let i = 1; i <= SIZES.smallCount; i++) await c.tagged(`A${i}`);
  c.destroy();
}

type FetchResult = { bytes: number; seconds: number[] };
const REPEATS = QUICK ? 2 : 5;
/** Approximate MB one mbps() run moves through the proxy (every repeat). */
const fetchedMB = (mailbox: string) =>
  ((mailbox === 'big' ? SIZES.big : SIZES.small * SIZES.smallCount) * REPEATS) / 1e6;

async function mbps(
  c: Ctx,
  port: number,
  tls: boolean,
  auth: Auth,
  mailbox: string,
  fetch: string,
): Promise<number> {
  const r = await c.gen.run<FetchResult>({
    kind: 'fetch',
    target: { port, tls },
    auth,
    mailbox,
    fetch,
    repeat: REPEATS,
  });
  // Best of the repeats: the least disturbed run on a shared 2-core machine.
  return r2(r.bytes / Math.min(...r.seconds) / 1e6);
}

async function throughput(c: Ctx) {
  const rows = [];
  const proxyAuth: Auth = { kind: 'login', user: 'bench', pass: c.password };
  const direct: Auth = { kind: 'xoauth2', user: c.user, token: c.token };
  for (const [name, mailbox, fetch] of [
    [`${SIZES.big >> 20} MB message`, 'big', '1'],
    [`${SIZES.smallCount} × 4 KB messages`, 'small', '1:*'],
  ] as const) {
    for (const leg of ['plain', 'tls'] as const) {
      const tls = leg === 'tls';
      log(`throughput ${name} ${leg}`);
      const cpu0 = treeCpuSeconds(c.proxyPid);
      const proxy = await mbps(c, tls ? c.proxy.imaps : c.proxy.plain, tls, proxyAuth, mailbox, fetch);
      // Proxy CPU per MB moved: steadier than MB/s on a shared machine (login included, small).
      const cpuMsPerMB = r3(((treeCpuSeconds(c.proxyPid) - cpu0) * 1000) / fetchedMB(mailbox));
      const dir = await mbps(c, tls ? c.dovecot.imapsPort : c.dovecot.imapPort, tls, direct, mailbox, fetch);
      const directTls = tls ? dir : await mbps(c, c.dovecot.imapsPort, true, direct, mailbox, fetch);
      const hap = c.haproxy
        ? await mbps(c, tls ? c.haproxy.imaps : c.haproxy.plain, tls, direct, mailbox, fetch)
        : undefined;
      rows.push({
        scenario: `FETCH ${name}, client leg ${leg === 'tls' ? 'TLS' : 'cleartext'}, upstream TLS`,
        clientLeg: leg,
        proxyMBps: proxy,
        proxyCpuMsPerMB: cpuMsPerMB,
        directMBps: dir,
        ratio: r2(proxy / dir),
        ...(leg === 'plain' ? { directTlsMBps: directTls, ratioVsDirectTls: r2(proxy / directTls) } : {}),
        ...(hap !== undefined ? { haproxyMBps: hap, haproxyRatio: r2(hap / dir) } : {}),
        target: leg === 'plain' ? 0.9 : 0.75,
      });
    }
  }
  return rows;
}

type LoginsResult = {
  count: number;
  errors: number;
  firstError?: string;
  elapsed: number;
  latenciesMs: number[];
};

async function loginLatency(c: Ctx) {
  const rows = [];
  for (const leg of ['plain', 'tls'] as const) {
    const tls = leg === 'tls';
    log(`login latency ${leg}`);
    const job = (port: number, auth: Auth, overTls = tls, maxCount = LOGIN_N) =>
      c.gen.run<LoginsResult>({
        kind: 'logins',
        target: { port, tls: overTls },
        auth,
        concurrency: 1,
        durationMs: 120_000,
        maxCount,
      });
    // A warm-up pass fills the proxy's credential and token caches (the target is about warm caches).
    await job(
      tls ? c.proxy.imaps : c.proxy.plain,
      { kind: 'login', user: 'bench', pass: c.password },
      tls,
      LOGIN_WARMUPS,
    );
    const p = await job(tls ? c.proxy.imaps : c.proxy.plain, {
      kind: 'login',
      user: 'bench',
      pass: c.password,
    });
    const direct: Auth = { kind: 'xoauth2', user: c.user, token: c.token };
    const d = await job(tls ? c.dovecot.imapsPort : c.dovecot.imapPort, direct);
    // The upstream leg is TLS: a direct TLS login is the like-for-like baseline for the cleartext leg.
    const dt = tls ? d : await job(c.dovecot.imapsPort, direct, true);
    rows.push({
      scenario: `login, client leg ${tls ? 'TLS' : 'cleartext'}`,
      clientLeg: leg,
      n: p.count,
      errors: p.errors + d.errors,
      proxyP50ms: r2(pct(p.latenciesMs, 50)),
      proxyP99ms: r2(pct(p.latenciesMs, 99)),
      directP50ms: r2(pct(d.latenciesMs, 50)),
      directP99ms: r2(pct(d.latenciesMs, 99)),
      addedP50ms: r2(pct(p.latenciesMs, 50) - pct(d.latenciesMs, 50)),
      ...(tls
        ? {}
        : {
            directTlsP50ms: r2(pct(dt.latenciesMs, 50)),
            addedP50msVsDirectTls: r2(pct(p.latenciesMs, 50) - pct(dt.latenciesMs, 50)),
          }),
      targetAddedP50ms: 2,
    });
  }
  return rows;
}

async function loginRate(c: Ctx) {
  const rows = [];
  for (const concurrency of [1, 8, 64]) {
    log(`login rate c=${concurrency}`);
    const job = (port: number, auth: Auth, tls = false) =>
      c.gen.run<LoginsResult>({
        kind: 'logins',
        target: { port, tls },
        auth,
        concurrency,
        durationMs: RATE_MS,
        maxCount: 100_000,
      });
    const p = await job(c.proxy.plain, { kind: 'login', user: 'bench', pass: c.password });
    const direct: Auth = { kind: 'xoauth2', user: c.user, token: c.token };
    const d = await job(c.dovecot.imapPort, direct);
    // Like-for-like with the proxy's TLS upstream leg: the same logins over TLS, straight to Dovecot.
    const dt = await job(c.dovecot.imapsPort, direct, true);
    const pr = p.count / p.elapsed;
    const dr = d.count / d.elapsed;
    const dtr = dt.count / dt.elapsed;
    rows.push({
      concurrency,
      proxyPerSec: r2(pr),
      directPerSec: r2(dr),
      ratio: r2(pr / dr),
      directTlsPerSec: r2(dtr),
      ratioVsDirectTls: r2(pr / dtr),
      errors: p.errors + d.errors + dt.errors,
      ...(p.firstError || d.firstError ? { firstError: p.firstError ?? d.firstError } : {}),
      target: 0.8,
    });
  }
  return rows;
}

type SubmitResult = { bytes: number; seconds: number[] };

async function submitMBps(c: Ctx, port: number, auth: SmtpAuth): Promise<number> {
  const r = await c.gen.run<SubmitResult>({
    kind: 'submit',
    target: { port, tls: true },
    auth,
    size: SMTP.big,
    repeat: SMTP.repeats,
  });
  // Best of the repeats, as for FETCH.
  return r2(r.bytes / Math.min(...r.seconds) / 1e6);
}

/** The proxy's SMTP and POP3 login: the account's app password, no OAuth on the client side. */
const proxyAuth = (c: Ctx) => ({ user: 'bench', pass: c.password });

async function smtpThroughput(c: Ctx) {
  log(`smtp throughput ${SMTP.big >> 20} MB`);
  return tlsTransferRow(c, {
    scenario: `SMTP DATA ${SMTP.big >> 20} MB message, client leg TLS, upstream TLS`,
    movedMB: (SMTP.big * SMTP.repeats) / 1e6,
    measure: (port, auth) => submitMBps(c, port, auth),
    ports: { proxy: c.proxy.submissions, direct: c.dovecot.submissionsPort, haproxy: c.haproxy?.submissions },
  });
}

/** A bulk transfer with TLS on both legs: the proxy, straight to Dovecot, through haproxy; one row. */
async function tlsTransferRow(
  c: Ctx,
  o: {
    scenario: string;
    movedMB: number;
    measure: (port: number, auth: SmtpAuth & Pop3Auth) => Promise<number>;
    ports: { proxy: number; direct: number; haproxy: number | undefined };
  },
) {
  const cpu0 = treeCpuSeconds(c.proxyPid);
  const proxy = await o.measure(o.ports.proxy, proxyAuth(c));
  const cpuMsPerMB = r3(((treeCpuSeconds(c.proxyPid) - cpu0) * 1000) / o.movedMB);
  const direct = await o.measure(o.ports.direct, c.direct);
  const hap = o.ports.haproxy ? await o.measure(o.ports.haproxy, c.direct) : undefined;
  return [
    {
      scenario: o.scenario,
      clientLeg: 'tls' as const,
      proxyMBps: proxy,
      proxyCpuMsPerMB: cpuMsPerMB,
      directMBps: direct,
      ratio: r2(proxy / direct),
      ...(hap !== undefined ? { haproxyMBps: hap, haproxyRatio: r2(hap / direct) } : {}),
      target: 0.9,
    },
  ];
}

/** A leg without a single success has no figure to report: the run fails instead of printing NaN. */
function noneSucceeded(what: string, ...legs: Array<{ count: number; firstError?: string }>): void {
  const bad = legs.find((l) => l.count === 0);
  if (bad) throw new Error(`${what}: no session succeeded (${bad.firstError ?? 'no error recorded'})`);
}

function smtpAuthLatency(c: Ctx) {
  log('smtp AUTH latency');
  return interleavedLatency(c, {
    kind: 'smtpAuths',
    scenario: 'SMTP AUTH PLAIN → 235, client leg TLS',
    ports: { proxy: c.proxy.submissions, direct: c.dovecot.submissionsPort },
    warmups: SMTP.warmups,
    count: SMTP.auths,
  });
}

/**
 * A warm-up pass through the proxy, then the proxy, a direct password login and a direct XOAUTH2
 * login with the proxy's token taking turns, all over TLS; one row.
 */
async function interleavedLatency(
  c: Ctx,
  o: {
    kind: 'smtpAuths' | 'pop3Logins';
    scenario: string;
    ports: { proxy: number; direct: number };
    warmups: number;
    count: number;
  },
) {
  const proxy = { target: { port: o.ports.proxy, tls: true }, auth: proxyAuth(c) };
  const dovecot = { port: o.ports.direct, tls: true };
  // The warm-up fills the proxy's credential and token caches (the target is about warm caches).
  await c.gen.run<TurnsResult[]>({ kind: o.kind, legs: [proxy], count: o.warmups });
  const [p, d, dx] = (await c.gen.run<TurnsResult[]>({
    kind: o.kind,
    count: o.count,
    legs: [
      proxy,
      { target: dovecot, auth: c.direct },
      // The proxy's upstream login is XOAUTH2, which Dovecot checks by introspection at the OAuth server.
      { target: dovecot, auth: { user: c.user, token: c.token } },
    ],
  })) as [TurnsResult, TurnsResult, TurnsResult];
  noneSucceeded(o.scenario, p, d, dx);
  return turnsLatencyRow(o.scenario, p, d, dx);
}

/** Proxy, direct password and direct XOAUTH2 legs of one interleaved latency run, as a row. */
function turnsLatencyRow(scenario: string, p: TurnsResult, d: TurnsResult, dx: TurnsResult) {
  return {
    scenario,
    n: p.count,
    errors: p.errors + d.errors + dx.errors,
    ...(p.firstError || d.firstError || dx.firstError
      ? { firstError: p.firstError ?? d.firstError ?? dx.firstError }
      : {}),
    proxyP50ms: r2(pct(p.latenciesMs, 50)),
    proxyP99ms: r2(pct(p.latenciesMs, 99)),
    directP50ms: r2(pct(d.latenciesMs, 50)),
    directP99ms: r2(pct(d.latenciesMs, 99)),
    addedP50ms: r2(pct(p.latenciesMs, 50) - pct(d.latenciesMs, 50)),
    directXoauth2P50ms: r2(pct(dx.latenciesMs, 50)),
    addedP50msVsDirectXoauth2: r2(pct(p.latenciesMs, 50) - pct(dx.latenciesMs, 50)),
    targetAddedP50ms: 2,
  };
}

type SubmissionsResult = { count: number; errors: number; firstError?: string; elapsed: number };

async function smtpRate(c: Ctx) {
  const concurrency = 8;
  log(`smtp submissions/s c=${concurrency}`);
  const job = (port: number, auth: SmtpAuth) =>
    c.gen.run<SubmissionsResult>({
      kind: 'submissions',
      target: { port, tls: true },
      auth,
      size: SMTP.small,
      concurrency,
      durationMs: SMTP.rateMs,
      maxCount: 100_000,
    });
  const p = await job(c.proxy.submissions, proxyAuth(c));
  const d = await job(c.dovecot.submissionsPort, c.direct);
  noneSucceeded('SMTP submission rate', p, d);
  const pr = p.count / p.elapsed;
  const dr = d.count / d.elapsed;
  return {
    scenario: `SMTP submissions (connect, EHLO, AUTH, MAIL, RCPT, DATA ${SMTP.small >> 10} KB, QUIT), client leg TLS`,
    concurrency,
    proxyPerSec: r2(pr),
    directPerSec: r2(dr),
    ratio: r2(pr / dr),
    errors: p.errors + d.errors,
    ...(p.firstError || d.firstError ? { firstError: p.firstError ?? d.firstError } : {}),
    target: 0.8,
  };
}

async function retrMBps(c: Ctx, port: number, auth: Pop3Auth): Promise<number> {
  const r = await c.gen.run<{ bytes: number; seconds: number[] }>({
    kind: 'retr',
    target: { port, tls: true },
    auth,
    repeat: POP3.repeats,
  });
  // Best of the repeats, as for FETCH.
  return r2(r.bytes / Math.min(...r.seconds) / 1e6);
}

function pop3Throughput(c: Ctx) {
  log(`pop3 throughput ${POP3.big >> 20} MB`);
  return tlsTransferRow(c, {
    scenario: `POP3 RETR ${POP3.big >> 20} MB message, client leg TLS, upstream TLS`,
    movedMB: (POP3.big * POP3.repeats) / 1e6,
    measure: (port, auth) => retrMBps(c, port, auth),
    ports: { proxy: c.proxy.pop3s, direct: c.dovecot.pop3sPort, haproxy: c.haproxy?.pop3s },
  });
}

function pop3LoginLatency(c: Ctx) {
  log('pop3 login latency');
  return interleavedLatency(c, {
    kind: 'pop3Logins',
    scenario: 'POP3 USER/PASS → +OK, client leg TLS',
    ports: { proxy: c.proxy.pop3s, direct: c.dovecot.pop3sPort },
    warmups: POP3.warmups,
    count: POP3.logins,
  });
}

async function lagP99(adminPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const vals = [...text.matchAll(/^imap_proxy_nodejs_eventloop_lag_p99_seconds(?:\{[^}]*\})? (\S+)/gm)].map(
    (m) => Number(m[1]),
  );
  return r2(Math.max(...vals) * 1000);
}

async function concurrency(c: Ctx) {
  const max = Math.max(...STEPS);
  const workers = Math.max(1, Math.ceil((max * 2.3) / 20_000));
  const fakes = await Promise.all(
    Array.from({ length: Math.max(1, Math.ceil(max / 7000)) }, () => startFakeProc()),
  );
  const gens: Generator[] = Array.from({ length: Math.max(1, Math.ceil(max / 6000)) }, () =>
    startGenerator(),
  );
  const dir = mkdtempSync(join(tmpdir(), 'iop-bench-conc-'));
  const bundle = join(dir, 'fakes-ca.pem');
  for (const f of fakes) appendFileSync(bundle, readFileSync(f.caFile));
  const ports = { plain: await freePort(), imaps: await freePort(), admin: await freePort() };
  const configFile = writeProxyConfig({
    dir,
    workers,
    plainPort: ports.plain,
    imapsPort: ports.imaps,
    adminPort: ports.admin,
    issuer: c.op.issuer,
    clientId: c.op.client.id,
    clientSecret: c.op.client.secret,
    upstream: { port: fakes[0]!.port, caFile: bundle },
    encryptionKey: generateKeyLine('k1'),
  });
  const pw = await seedAccounts(
    configFile,
    fakes.map((f, i) => ({
      login: `idle${i}`,
      upstreamUser: `idle${i}@example.com`,
      refreshToken: 'unused',
      accessToken: `fake-upstream-accepts-any-${i}`,
      accessTokenExpiresAt: Date.now() + 24 * 3600_000,
      upstreamPort: f.port,
    })),
  );
  const auths: Auth[] = fakes.map((_f, i) => ({
    kind: 'login',
    user: `idle${i}`,
    pass: pw.get(`idle${i}`)!,
  }));
  const proxy = await startProxyProcess(configFile, PROXY);
  const steps = [];
  try {
    await lagP99(ports.admin);
    const base = treeRss(proxy.pid);
    let open = 0;
    for (const target of STEPS) {
      log(
        `concurrency step ${target} (${workers} workers, ${gens.length} generators, ${fakes.length} fake upstreams)`,
      );
      const add = target - open;
      const t0 = performance.now();
      const res = await Promise.all(
        gens.map((g, i) => {
          const share = Math.floor(add / gens.length) + (i < add % gens.length ? 1 : 0);
          return g.run<{ opened: number; failed: number; firstError?: string }>({
            kind: 'hold',
            target: { port: ports.plain, tls: false },
            auths,
            open: share,
          });
        }),
      );
      const rampSec = (performance.now() - t0) / 1000;
      open += res.reduce((n, r) => n + r.opened, 0);
      const failed = res.reduce((n, r) => n + r.failed, 0);
      const rampLag = await lagP99(ports.admin);
      // A fixed measurement window with every session idle (not synchronisation).
      await new Promise((r) => setTimeout(r, QUICK ? 1000 : 3000));
      const idleLag = await lagP99(ports.admin);
      const rss = treeRss(proxy.pid);
      steps.push({
        target,
        sessions: open,
        failed,
        ...(failed ? { firstError: res.find((r) => r.firstError)?.firstError } : {}),
        rampSeconds: r2(rampSec),
        proxyRssMB: r2(rss / 2 ** 20),
        rssPerSessionKiB: r2((rss - base) / 1024 / Math.max(1, open)),
        lagP99msRamp: rampLag,
        lagP99msIdle: idleLag,
      });
      if (failed > target / 10) break;
    }
  } finally {
    await Promise.all(gens.map((g) => g.run({ kind: 'close' }, 30_000).catch(() => undefined)));
    await Promise.all(gens.map((g) => g.stop()));
    await proxy.stop(30_000);
    await Promise.all(fakes.map((f) => f.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
  return {
    upstream: 'light fake upstream (test/helpers/fake-upstream.ts), implicit TLS',
    workers,
    steps,
    targetKiB: 64,
    targetLagMs: 50,
  };
}

async function refreshStorm(c: Ctx) {
  const fake = await startFakeProc();
  const dir = mkdtempSync(join(tmpdir(), 'iop-bench-storm-'));
  const ports = { plain: await freePort(), imaps: await freePort(), admin: await freePort() };
  const configFile = writeProxyConfig({
    dir,
    workers: 1,
    plainPort: ports.plain,
    imapsPort: ports.imaps,
    adminPort: ports.admin,
    issuer: c.op.issuer,
    clientId: c.op.client.id,
    clientSecret: c.op.client.secret,
    upstream: { port: fake.port, caFile: fake.caFile },
    encryptionKey: generateKeyLine('k1'),
  });
  const grant = await c.op.mintGrant('storm@example.com');
  const pw = await seedAccounts(configFile, [
    {
      login: 'storm',
      upstreamUser: 'storm@example.com',
      refreshToken: grant.refresh_token,
      accessToken: grant.access_token,
      accessTokenExpiresAt: Date.now() - 1000,
    },
  ]);
  const proxy = await startProxyProcess(configFile, PROXY);
  try {
    log(`refresh storm ${STORM}`);
    const before = c.op.tokenRequests();
    const r = await runJob<{ count: number; errors: number; firstError?: string; latenciesMs: number[] }>({
      kind: 'storm',
      target: { port: ports.plain, tls: false },
      auth: { kind: 'login', user: 'storm', pass: pw.get('storm')! },
      count: STORM,
    });
    return {
      logins: STORM,
      ok: r.count,
      errors: r.errors,
      ...(r.firstError ? { firstError: r.firstError } : {}),
      tokenRequests: c.op.tokenRequests() - before,
      p50ms: r2(pct(r.latenciesMs, 50)),
      p99ms: r2(pct(r.latenciesMs, 99)),
      targetTokenRequests: 1,
    };
  } finally {
    await proxy.stop(30_000);
    await fake.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function table(res: Results): string {
  const out: string[] = [];
  out.push(
    `Machine: ${res.machine.cpus}× ${res.machine.cpuModel}, ${res.machine.memGB} GB RAM, Linux ${res.machine.kernel}, Node ${res.machine.node}${res.quick ? ' (--quick)' : ''}`,
  );
  // A table only for the scenarios that ran (--only).
  const section = (head: string, rule: string, rows: string[]) => {
    if (rows.length) out.push('', head, rule, ...rows);
  };
  section(
    '| throughput | proxy MB/s | direct MB/s | ratio | target | direct TLS MB/s (ratio) | haproxy MB/s | proxy CPU ms/MB |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    [...res.throughput, ...res.smtpThroughput, ...res.pop3Throughput].map(
      (t) =>
        `| ${t.scenario} | ${t.proxyMBps} | ${t.directMBps} | ${t.ratio} | ≥ ${t.target} | ${'directTlsMBps' in t ? `${t.directTlsMBps} (${t.ratioVsDirectTls})` : '—'} | ${t.haproxyMBps ?? 'n/a'} | ${t.proxyCpuMsPerMB} |`,
    ),
  );
  section(
    '| login latency (warm caches) | proxy p50 / p99 ms | direct XOAUTH2 p50 / p99 ms | added p50 ms | target | direct TLS p50 ms (added) |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    res.loginLatency.map(
      (l) =>
        `| ${l.scenario} | ${l.proxyP50ms} / ${l.proxyP99ms} | ${l.directP50ms} / ${l.directP99ms} | ${l.addedP50ms} | ≤ 2 | ${l.directTlsP50ms === undefined ? '—' : `${l.directTlsP50ms} (${l.addedP50msVsDirectTls})`} |`,
    ),
  );
  section(
    '| login rate (cleartext client leg), concurrency | proxy /s | direct /s | ratio | target | direct TLS /s (ratio) |',
    '| ---: | ---: | ---: | ---: | ---: | ---: |',
    res.loginRate.map(
      (r) =>
        `| ${r.concurrency} | ${r.proxyPerSec} | ${r.directPerSec} | ${r.ratio} | ≥ 0.8 | ${r.directTlsPerSec} (${r.ratioVsDirectTls}) |`,
    ),
  );
  section(
    '| SMTP / POP3 login latency (warm caches) | proxy p50 / p99 ms | direct password p50 / p99 ms | added p50 ms | target | direct XOAUTH2 p50 ms (added) | errors |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    [res.smtpAuthLatency, res.pop3LoginLatency].flatMap((sa) =>
      sa
        ? [
            `| ${sa.scenario} | ${sa.proxyP50ms} / ${sa.proxyP99ms} | ${sa.directP50ms} / ${sa.directP99ms} | ${sa.addedP50ms} | ≤ ${sa.targetAddedP50ms} | ${sa.directXoauth2P50ms} (${sa.addedP50msVsDirectXoauth2}) | ${sa.errors} |`,
          ]
        : [],
    ),
  );
  const sr = res.smtpRate;
  section(
    '| SMTP submission rate | concurrency | proxy /s | direct TLS /s | ratio | target | errors |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    sr
      ? [
          `| ${sr.scenario} | ${sr.concurrency} | ${sr.proxyPerSec} | ${sr.directPerSec} | ${sr.ratio} | ≥ ${sr.target} | ${sr.errors} |`,
        ]
      : [],
  );
  const cc = res.concurrency;
  if (cc) {
    out.push(
      '',
      `| idle IDLE sessions (${cc.workers} workers, fake upstream) | held | failed | proxy RSS MB | RSS/session KiB (≤ 64) | lag p99 ms ramp / idle (< 50) |`,
      '| ---: | ---: | ---: | ---: | ---: | ---: |',
    );
    for (const s of cc.steps)
      out.push(
        `| ${s.target} | ${s.sessions} | ${s.failed} | ${s.proxyRssMB} | ${s.rssPerSessionKiB} | ${s.lagP99msRamp} / ${s.lagP99msIdle} |`,
      );
  }
  const st = res.refreshStorm;
  if (st) {
    out.push(
      '',
      '| refresh storm | logins ok | token requests (target 1) | p50 ms | p99 ms |',
      '| --- | ---: | ---: | ---: | ---: |',
    );
    out.push(
      `| ${st.logins} concurrent logins, expired token | ${st.ok} | ${st.tokenRequests} | ${st.p50ms} | ${st.p99ms} |`,
    );
  }
  hostileTables(res, out);
  if (res.graph) out.push(...graphTable(res.graph));
  return out.join('\n');
}

function hostileTables(res: Results, out: string[]): void {
  const t = res.trickle;
  if (t)
    out.push(
      '',
      `| ${t.slots} trickling pre-auth connections from 127.0.0.1 (default limits) | admitted / refused | real user from 127.0.0.2 p50 / p99 ms unloaded → loaded | p99 ratio (≤ 2) | proxy RSS MB | load avg |`,
      '| --- | ---: | ---: | ---: | ---: | ---: |',
      `| NOOP every ~3 s, refused slots retry after 10 s | ${t.admitted} / ${t.refused} | ${t.legit.unloaded.p50ms} / ${t.legit.unloaded.p99ms} → ${t.legit.loaded.p50ms} / ${t.legit.loaded.p99ms} (errors ${t.legit.loaded.errors}) | ${t.p99Ratio} | ${t.proxyRssMB.loaded} | ${t.loadAverage.after[0]} |`,
    );
  const s = res.spray;
  if (s)
    out.push(
      '',
      '| password spray from 127.0.0.1 (default limiter and tarpit) | attempts (per s) | password checks | [LIMIT] / closed after the tarpit | held / closed at once | proxy CPU s / wall s | share of a core: all − without the attack = the attack (< 0.01) | real user from 127.0.0.2: ok / errors, p50 / p99 ms unloaded → during | load avg |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      `| 100 connections, 500 made-up users | ${s.attempts} (${s.guessesPerSecond}) | ${s.passwordChecks} | ${s.limited} / ${s.refusedAtAccept} | ${s.tarpit.held} / ${s.tarpit.full} | ${s.proxyCpuSeconds} / ${s.elapsed} | ${s.proxyCpuShareOfCore} − ${s.withoutAttackCpuShareOfCore} = ${s.attackCpuShareOfCore} | ${s.realUser.duringAttack.ok} / ${s.realUser.duringAttack.errors}, ${s.realUser.unloaded.p50ms} / ${s.realUser.unloaded.p99ms} → ${s.realUser.duringAttack.p50ms} / ${s.realUser.duringAttack.p99ms} | ${s.loadAverage.before[0]}–${s.loadAverage.after[0]} |`,
    );
  const k = res.soak;
  if (k)
    out.push(
      '',
      `| soak ${k.seconds} s | IMAP / SMTP / POP3 logins ok (errors) | SIGHUPs (applied) | token requests | idle sessions answering at the end | RSS MB first → last | fds first → last | load avg |`,
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      `| every protocol, idle sessions, reloads | ${['imap', 'smtp', 'pop3'].map((p) => `${k.logins[p]?.ok} (${k.logins[p]?.errors})`).join(' / ')} | ${k.sighups} (${k.reloadsApplied}) | ${k.tokenRequests} | ${k.idle.answeredAtEnd} of ${k.idle.opened} | ${k.rssMB.first} → ${k.rssMB.last} (${k.rssMB.change}); medians ${k.medians.rssMB.secondTenth} → ${k.medians.rssMB.lastTenth} (${k.medians.rssMB.change}) | ${k.fds.first} → ${k.fds.last} (${k.fds.change}) | ${k.loadAverage[0]} |`,
    );
}

type Results = {
  machine: { cpus: number; cpuModel: string; memGB: number; kernel: string; node: string };
  quick: boolean;
  startedAt: string;
  durationSeconds: number;
  throughput: Awaited<ReturnType<typeof throughput>>;
  loginLatency: Awaited<ReturnType<typeof loginLatency>>;
  loginRate: Awaited<ReturnType<typeof loginRate>>;
  concurrency: Awaited<ReturnType<typeof concurrency>> | undefined;
  refreshStorm: Awaited<ReturnType<typeof refreshStorm>> | undefined;
  smtpThroughput: Awaited<ReturnType<typeof smtpThroughput>>;
  smtpAuthLatency: Awaited<ReturnType<typeof smtpAuthLatency>> | undefined;
  smtpRate: Awaited<ReturnType<typeof smtpRate>> | undefined;
  pop3Throughput: Awaited<ReturnType<typeof pop3Throughput>>;
  pop3LoginLatency: Awaited<ReturnType<typeof pop3LoginLatency>> | undefined;
  trickle: Awaited<ReturnType<typeof trickle>> | undefined;
  spray: Awaited<ReturnType<typeof spray>> | undefined;
  soak: Awaited<ReturnType<typeof soak>> | undefined;
  graph: Awaited<ReturnType<typeof graph>> | undefined;
};

async function main(): Promise<void> {
  const started = Date.now();
  // The soak wants token refreshes within its run: short-lived access tokens when it is asked for.
  const op = await startOP({ accessTokenTtl: wants('soak') ? 30 : 3600 });
  const introspection = new URL(op.introspection.url);
  introspection.username = op.introspection.id;
  introspection.password = op.introspection.secret;
  // Dovecot submission relays every accepted message to the sink, which stores it before its 250.
  const sink = await startSmtpSink();
  const direct = { user: 'direct@example.com', pass: 'direct-bench-password' };
  const dovecot = await startDovecot({
    introspectionUrl: introspection.toString(),
    users: [{ name: direct.user, password: direct.pass }],
    relayPort: sink.port,
  });
  const dir = mkdtempSync(join(tmpdir(), 'iop-bench-'));
  const gen = startGenerator();
  let haproxy: Awaited<ReturnType<typeof startHaproxy>>;
  let proxy: Awaited<ReturnType<typeof startProxyProcess>> | undefined;
  try {
    const user = 'bench@example.com';
    const grant = await op.mintGrant(user);
    // Only the FETCH rows read mail: the other scenarios skip the seeding.
    if (wants('throughput')) {
      log('seeding mail');
      await seedMail(dovecot, user, grant.access_token);
    }
    if (wants('pop3-throughput')) {
      log('seeding POP3 inboxes');
      // The same message in the proxied user's and the direct user's INBOX: RETR 1 reads it.
      const m = benchMessage(POP3.big, 0);
      await dovecot.seed(user, m);
      await dovecot.seed(direct.user, m);
    }
    const bench = await startBenchProxy({ op, dovecot, proxyOpts: PROXY }, dir, {
      defaultLimits: false,
      allProtocols: true,
      grant,
    });
    proxy = bench.proxy;
    const ports = bench.ports;
    // haproxy does the proxy's crypto work: the same client leg, verified TLS to the upstream.
    const hp = await freePorts(['plain', 'imaps', 'submissions', 'pop3s'] as const);
    const upstreamCaFile = dovecot.caFile;
    haproxy = await startHaproxy(dir, [
      { name: 'plain', listen: hp.plain, target: dovecot.imapsPort, upstreamCaFile },
      { name: 'imaps', listen: hp.imaps, target: dovecot.imapsPort, clientTls: true, upstreamCaFile },
      {
        name: 'submissions',
        listen: hp.submissions,
        target: dovecot.submissionsPort,
        clientTls: true,
        upstreamCaFile,
      },
      { name: 'pop3s', listen: hp.pop3s, target: dovecot.pop3sPort, clientTls: true, upstreamCaFile },
    ]);
    const ctx: Ctx = {
      dir,
      op,
      dovecot,
      user,
      token: grant.access_token,
      password: bench.password,
      proxy: ports,
      proxyPid: proxy.pid,
      ...(haproxy ? { haproxy: hp } : {}),
      direct,
      gen,
    };
    const tp = wants('throughput') ? await throughput(ctx) : [];
    const ll = wants('latency') ? await loginLatency(ctx) : [];
    const lr = wants('rate') ? await loginRate(ctx) : [];
    const stp = wants('smtp-throughput') ? await smtpThroughput(ctx) : [];
    const sal = wants('smtp-latency') ? await smtpAuthLatency(ctx) : undefined;
    const sr = wants('smtp-rate') ? await smtpRate(ctx) : undefined;
    const ptp = wants('pop3-throughput') ? await pop3Throughput(ctx) : [];
    const pll = wants('pop3-latency') ? await pop3LoginLatency(ctx) : undefined;
    await proxy.stop(30_000);
    proxy = undefined;
    await haproxy?.stop();
    haproxy = undefined;
    const env = { op, dovecot, gen, quick: QUICK, proxyOpts: PROXY, log };
    const tr = wants('trickle') ? await trickle(env) : undefined;
    const sp = wants('spray') ? await spray(env) : undefined;
    const sk = wants('soak') ? await soak(env) : undefined;
    const gr = wants('graph') ? await graph(env) : undefined;
    const storm = wants('storm') ? await refreshStorm(ctx) : undefined;
    const conc = wants('concurrency') ? await concurrency(ctx) : undefined;
    const res: Results = {
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
        memGB: Math.round(totalmem() / 2 ** 30),
        kernel: release(),
        node: process.version,
      },
      quick: QUICK,
      startedAt: new Date(started).toISOString(),
      durationSeconds: r3((Date.now() - started) / 1000),
      throughput: tp,
      loginLatency: ll,
      loginRate: lr,
      concurrency: conc,
      refreshStorm: storm,
      smtpThroughput: stp,
      smtpAuthLatency: sal,
      smtpRate: sr,
      pop3Throughput: ptp,
      pop3LoginLatency: pll,
      trickle: tr,
      spray: sp,
      soak: sk,
      graph: gr,
    };
    writeFileSync(OUT, `${JSON.stringify(res, null, 2)}\n`);
    process.stdout.write(`${table(res)}\n\nwrote ${OUT}\n`);
  } finally {
    await proxy?.stop(10_000);
    await haproxy?.stop();
    await gen.stop();
    await dovecot.stop();
    await sink.stop();
    await op.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
