import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.js';
import {
  GraphDeliverer,
  type GraphTarget,
  type GraphTokenSource,
} from '../../src/protocols/smtp/graph/deliver.js';
import type { Envelope } from '../../src/protocols/smtp/transaction.js';
import { generateKeyLine } from '../../src/store/crypto.js';
import { type FakeGraph, startFakeGraph } from '../helpers/fake-graph.js';
import { GRAPH_AUDIENCE } from '../helpers/graph-stack.js';
import { opProviderConfig, startOP, type TestOP } from '../helpers/op.js';
import { configText, seedUsers, writeConfig } from '../integration/ops/harness.js';
import { freePorts, metric, r2 } from './hostile.js';
import { treeCpuSeconds, treeRss } from './procs.js';
import { type ProxyProcess, startProxyProcess } from './setup.js';
import { benchMessage, SmtpConn } from './smtp.js';

/**
 * Graph delivery (`smtp_delivery: graph`): messages/s and MB/s through the proxy's SMTP front door
 * (implicit TLS) on to Graph, against the same deliveries made straight to Graph by the proxy's
 * own Graph client (GraphDeliverer) in this process; proxy CPU per MB; and the proxy's memory per
 * message while Graph holds K large messages unanswered. Graph is a fake (no real Graph endpoint
 * is reachable here) running in this process, so it shares the machine with the proxy and clients.
 */

export interface GraphEnv {
  quick: boolean;
  proxyOpts: { cwd: string; entry?: string; nodeArgs?: string[] };
  log(s: string): void;
}

const sizes = (quick: boolean) => ({
  small: 64 << 10,
  connections: 8,
  perConnection: quick ? 20 : 100,
  // 4 MiB still carries a ≥ 3 MB attachment: the draft and upload-session path, as 10 MiB does.
  large: quick ? 4 << 20 : 10 << 20,
  largeRepeats: quick ? 2 : 3,
  medium: 2_500_000,
  mediumRepeats: quick ? 2 : 5,
  held: quick ? 4 : 16,
  heldSize: 4 << 20,
  // Ends the requests the fake holds; longer than K messages take to arrive.
  timeoutSeconds: quick ? 5 : 10,
});

/** seedUsers' first account: its login is also its mailbox and the token's subject. */
const MAILBOX = 'user0@example.com';
const FROM = 'bench@example.com';
const RCPT = 'rcpt@example.com';
/** What SmtpConn.send says in MAIL and RCPT (no BODY=: 7BIT). */
const ENVELOPE: Envelope = { from: FROM, recipients: [RCPT], body: '7BIT' };
const SCOPE = 'mail.send mail.readwrite';
/** The size of a socket read: the direct leg hands the deliverer slices, as the session does. */
const SLICE = 64 << 10;
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const mb = (bytes: number) => r2(bytes / 2 ** 20);
const load = () => loadavg().map((x) => r2(x)) as [number, number, number];

/** A scan of about `size` bytes: a short text part and a PDF-sized attachment, base64 in 76-column lines. */
export function scanMessage(size: number, n: number): Buffer {
  const head =
    `From: ${FROM}\r\nTo: ${RCPT}\r\nSubject: scan ${n}\r\nMessage-ID: <g${n}@example.com>\r\nMIME-Version: 1.0\r\n` +
    'Content-Type: multipart/mixed; boundary="==scan=="\r\n\r\n--==scan==\r\nContent-Type: text/plain\r\n\r\nScan attached.\r\n' +
    '--==scan==\r\nContent-Type: application/pdf; name="scan.pdf"\r\nContent-Disposition: attachment; filename="scan.pdf"\r\n' +
    'Content-Transfer-Encoding: base64\r\n\r\n';
  const tail = '\r\n--==scan==--\r\n';
  // 57 bytes become one 78-byte line (76 characters and CRLF).
  const raw = Math.floor(((size - head.length - tail.length) * 57) / 78);
  const b64 = randomBytes(raw).toString('base64').replace(/.{76}/g, '$&\r\n');
  return Buffer.from(head + b64.replace(/\r\n$/, '') + tail);
}

function slices(m: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < m.length; i += SLICE) out.push(m.subarray(i, i + SLICE));
  return out;
}

interface Stage {
  op: TestOP;
  graph: FakeGraph;
  proxy: ProxyProcess;
  port: number;
  adminPort: number;
  password: string;
  /** One delivery straight to the fake, as the proxy makes it; resolves with the reply code. */
  direct(m: Buffer): Promise<number>;
}

/** Graph tokens from a grant of our own (the proxy's refresh token rotates on its own schedule). */
async function directTokens(op: TestOP): Promise<GraphTokenSource> {
  let refresh = (await op.mintGrant(MAILBOX)).refresh_token;
  let token: string | undefined;
  const get: GraphTokenSource = async (force) => {
    if (token === undefined || force) {
      const r = await op.refresh(refresh, { resource: GRAPH_AUDIENCE, scope: SCOPE });
      if (r.refresh_token) refresh = r.refresh_token;
      token = r.access_token;
    }
    return token;
  };
  // Fetched once before any concurrency: two refreshes with one token would end the grant.
  await get(false);
  return get;
}

async function withStage<T>(env: GraphEnv, timeoutSeconds: number, fn: (s: Stage) => Promise<T>): Promise<T> {
  const op = await startOP({ accessTokenTtl: 3600, resources: { [GRAPH_AUDIENCE]: { scope: SCOPE } } });
  const dir = mkdtempSync(join(tmpdir(), 'iop-bench-graph-'));
  let graph: FakeGraph | undefined;
  let proxy: ProxyProcess | undefined;
  try {
    graph = await startFakeGraph({
      introspect: {
        url: op.introspection.url,
        clientId: op.introspection.id,
        secret: op.introspection.secret,
      },
      audience: GRAPH_AUDIENCE,
    });
    const ports = await freePorts(['smtp', 'admin'] as const);
    const file = join(dir, 'config.yaml');
    writeConfig(
      file,
      configText({
        dataDir: dir,
        key: generateKeyLine('k1'),
        level: 'info',
        workers: 1,
        listeners: [{ name: 'submissions', protocol: 'smtp', port: ports.smtp, tls: 'implicit' }],
        adminPort: ports.admin,
        // The benchmark's lifted caps: one account holds many sessions at once.
        limits: {
          max_connections: 100_000,
          max_sessions_per_account: 100_000,
          login_timeout_seconds: 120,
          preauth_per_address: 100_000,
          preauth_total: 100_000,
        },
        provider: {
          ...opProviderConfig(op),
          smtp_delivery: 'graph',
          graph_url: graph.url,
          graph_resource: GRAPH_AUDIENCE,
          graph_scope: SCOPE,
          graph_timeout_seconds: timeoutSeconds,
        },
      }),
    );
    const [user] = await seedUsers(file, op, 1);
    proxy = await startProxyProcess(file, env.proxyOpts);
    const tokens = await directTokens(op);
    const deliverer = new GraphDeliverer({ log: silentLogger });
    const target: GraphTarget = {
      provider: 'bench',
      baseUrl: graph.url,
      mailbox: MAILBOX,
      saveToSentItems: true,
      timeoutMs: timeoutSeconds * 1000,
    };
    const signal = new AbortController().signal;
    return await fn({
      op,
      graph,
      proxy,
      port: ports.smtp,
      adminPort: ports.admin,
      password: user!.password,
      direct: async (m) =>
        (await deliverer.deliver(target, tokens, ENVELOPE, slices(m), m.length, signal)).code,
    });
  } finally {
    await proxy?.stop(30_000);
    await graph?.stop();
    await op.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** An authenticated SMTP session on the proxy's implicit-TLS listener. */
async function login(s: Stage): Promise<SmtpConn> {
  const c = await SmtpConn.open({ port: s.port, tls: true });
  try {
    await c.ehlo();
    await c.auth({ user: MAILBOX, pass: s.password });
    return c;
  } catch (err) {
    c.destroy();
    throw err;
  }
}

type Lanes = { count: number; errors: number; firstError?: string; seconds: number };

/** `lanes` sequences of `each` sends, all at once; a send that throws or is not answered 250 is an error. */
async function lanes(lanes: number, each: number, send: (lane: number) => Promise<unknown>): Promise<Lanes> {
  const r: Lanes = { count: 0, errors: 0, seconds: 0 };
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      for (let i = 0; i < each; i++) {
        try {
          await send(lane);
          r.count++;
        } catch (err) {
          r.errors++;
          r.firstError ??= (err as Error).message.slice(0, 300);
        }
      }
    }),
  );
  r.seconds = (performance.now() - t0) / 1000;
  return r;
}

const ok = async (code: Promise<number>) => {
  const c = await code;
  if (c !== 250) throw new Error(`Graph delivery answered ${c}`);
};

/** Drops what the fake stored (every message it accepted), so a long run does not grow the bench process. */
function forget(g: FakeGraph): void {
  g.received.length = 0;
  g.requests.length = 0;
}

async function messageRate(env: GraphEnv, s: Stage, z: ReturnType<typeof sizes>) {
  const n = z.connections * z.perConnection;
  env.log(`graph: ${n} × ${z.small >> 10} KB messages over ${z.connections} connections`);
  const m = benchMessage(z.small, 1);
  const conns = await Promise.all(Array.from({ length: z.connections }, () => login(s)));
  const cpu0 = treeCpuSeconds(s.proxy.pid);
  const p = await lanes(z.connections, z.perConnection, (lane) => conns[lane]!.send(m));
  const cpu = treeCpuSeconds(s.proxy.pid) - cpu0;
  await Promise.all(conns.map((c) => c.quit()));
  const sendMails = s.graph.count('send_mail', 202);
  forget(s.graph);
  const d = await lanes(z.connections, z.perConnection, () => ok(s.direct(m)));
  forget(s.graph);
  const pr = p.count / p.seconds;
  const dr = d.count / d.seconds;
  return {
    scenario: `${n} × ${z.small >> 10} KB messages (sendMail), ${z.connections} connections back to back, client leg TLS`,
    messages: n,
    messageBytes: m.length,
    proxyPerSec: r2(pr),
    directPerSec: r2(dr),
    ratio: r2(pr / dr),
    proxyCpuMsPerMB: r3((cpu * 1000) / ((p.count * m.length) / 1e6)),
    graphSendMails: sendMails,
    errors: p.errors + d.errors,
    ...(p.firstError || d.firstError ? { firstError: p.firstError ?? d.firstError } : {}),
  };
}

/** One message `repeats` times through one proxy session, then straight to Graph; best of each. */
async function transfer(
  env: GraphEnv,
  s: Stage,
  o: { name: string; message: Buffer; repeats: number; path: 'sendMail' | 'draft' },
) {
  env.log(`graph: ${o.name}`);
  const c = await login(s);
  const proxySeconds: number[] = [];
  const cpu0 = treeCpuSeconds(s.proxy.pid);
  try {
    for (let i = 0; i < o.repeats; i++) proxySeconds.push((await c.send(o.message)) / 1000);
  } finally {
    await c.quit();
  }
  const cpu = treeCpuSeconds(s.proxy.pid) - cpu0;
  const viaPath = s.graph.received.filter((r) => r.path === o.path).length;
  const uploadSessions = s.graph.count('create_upload_session', 201);
  forget(s.graph);
  const directSeconds: number[] = [];
  for (let i = 0; i < o.repeats; i++) {
    const t0 = performance.now();
    await ok(s.direct(o.message));
    directSeconds.push((performance.now() - t0) / 1000);
  }
  forget(s.graph);
  // Best of the repeats: the least disturbed run on a shared machine.
  const proxy = o.message.length / Math.min(...proxySeconds) / 1e6;
  const direct = o.message.length / Math.min(...directSeconds) / 1e6;
  return {
    scenario: o.name,
    messageBytes: o.message.length,
    repeats: o.repeats,
    graphPath: o.path,
    proxyMessagesOnPath: viaPath,
    uploadSessions,
    proxyMBps: r2(proxy),
    directMBps: r2(direct),
    ratio: r2(proxy / direct),
    proxyCpuMsPerMB: r3((cpu * 1000) / ((o.message.length * o.repeats) / 1e6)),
  };
}

/**
 * K sessions each send a large message while the fake holds every upload chunk unanswered; the
 * proxy's RSS with all K held, over its RSS before, per message. graph_timeout_seconds ends them.
 */
async function heldMemory(env: GraphEnv, s: Stage, z: ReturnType<typeof sizes>) {
  const k = z.held;
  env.log(`graph: ${k} × ${z.heldSize >> 20} MiB messages held at Graph`);
  const m = scanMessage(z.heldSize, 2);
  const conns = await Promise.all(Array.from({ length: k }, () => login(s)));
  forget(s.graph);
  await new Promise((r) => setTimeout(r, 500));
  const base = treeRss(s.proxy.pid);
  // The status is not used while hanging.
  s.graph.failNext({ hang: true, status: 504, call: 'upload', times: k });
  const t0 = performance.now();
  const replies: Record<string, number> = {};
  let settled = 0;
  const sends = conns.map(async (c) => {
    try {
      await c.send(m);
      replies['250'] = (replies['250'] ?? 0) + 1;
    } catch (err) {
      const code = /server said: (\d{3})/.exec((err as Error).message)?.[1] ?? 'error';
      replies[code] = (replies[code] ?? 0) + 1;
    } finally {
      settled++;
    }
  });
  const hung = () => s.graph.requests.filter((q) => q.call === 'upload' && q.status === 0).length;
  let peak = base;
  let maxHeld = 0;
  let allHeldRss = 0;
  let allHeldAfter: number | undefined;
  // Samples until every message has its answer; "all held" once K uploads hang and no one settled.
  while (settled < k && performance.now() - t0 < (z.timeoutSeconds + 60) * 1000) {
    const rss = treeRss(s.proxy.pid);
    const h = settled === 0 ? hung() : 0;
    peak = Math.max(peak, rss);
    maxHeld = Math.max(maxHeld, h);
    if (h === k) {
      allHeldRss = Math.max(allHeldRss, rss);
      allHeldAfter ??= r2((performance.now() - t0) / 1000);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  await Promise.all(sends);
  await Promise.all(conns.map((c) => c.quit()));
  s.graph.clearFailures();
  forget(s.graph);
  const perMessage = (allHeldRss - base) / k;
  return {
    scenario: `${k} × ${z.heldSize >> 20} MiB scans at once, Graph holding each upload unanswered`,
    messages: k,
    messageBytes: m.length,
    maxHeldAtOnce: maxHeld,
    allHeldAfterSeconds: allHeldAfter ?? null,
    proxyRssMB: { before: mb(base), allHeld: allHeldRss ? mb(allHeldRss) : null, peak: mb(peak) },
    rssPerMessageMB: allHeldRss ? mb(perMessage) : null,
    perMessageTimesMessageSize: allHeldRss ? r2(perMessage / m.length) : null,
    targetTimesMessageSize: 3,
    repliesAfterTimeout: replies,
    graphTimeoutSeconds: z.timeoutSeconds,
  };
}

export async function graph(env: GraphEnv) {
  const z = sizes(env.quick);
  return withStage(env, z.timeoutSeconds, async (s) => {
    const load0 = load();
    // Warm-up: the proxy's Graph token, TLS session, code paths and heap for both paths; the direct leg's.
    const w = await login(s);
    await w.send(benchMessage(z.small, 0));
    await w.send(scanMessage(z.heldSize, 0));
    await w.quit();
    await ok(s.direct(benchMessage(z.small, 0)));
    forget(s.graph);
    // Memory first, before the throughput rows have grown the proxy's heap.
    const memory = await heldMemory(env, s, z);
    const rate = await messageRate(env, s, z);
    const large = await transfer(env, s, {
      name: `${z.large >> 20} MiB scan (draft + upload session), client leg TLS`,
      message: scanMessage(z.large, 3),
      repeats: z.largeRepeats,
      path: 'draft',
    });
    const medium = await transfer(env, s, {
      name: `${r2(z.medium / 1e6)} MB message (sendMail), client leg TLS`,
      message: benchMessage(z.medium, 4),
      repeats: z.mediumRepeats,
      path: 'sendMail',
    });
    return {
      notes: [
        'Graph is a fake (test/helpers/fake-graph.ts): no real Graph endpoint is reachable here. It runs in the benchmark process and shares the machine (and that process) with the SMTP clients and the direct client.',
        'direct: the same deliveries made by GraphDeliverer (the proxy’s own Graph client) in the benchmark process, straight to the fake, with the same concurrency and message; no SMTP leg.',
        'proxy: `serve` child process, provider smtp_delivery: graph, SMTP over implicit TLS, AUTH PLAIN with an app password; the proxy fetches its Graph token from its grant.',
      ],
      messageRate: rate,
      throughput: [large, medium],
      memory,
      delivered: await metric(s.adminPort, 'imap_proxy_graph_deliveries_total', 'result="delivered"'),
      loadAverage: { before: load0, after: load() },
    };
  });
}

/** The scenario's rows in the readable table. */
export function graphTable(g: Awaited<ReturnType<typeof graph>>): string[] {
  const r = g.messageRate;
  const m = g.memory;
  return [
    '',
    '| Graph delivery (fake Graph in the bench process) | proxy | direct (GraphDeliverer) | ratio | proxy CPU ms/MB | errors | load avg |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    `| ${r.scenario} | ${r.proxyPerSec} msg/s | ${r.directPerSec} msg/s | ${r.ratio} | ${r.proxyCpuMsPerMB} | ${r.errors} | ${g.loadAverage.before[0]}–${g.loadAverage.after[0]} |`,
    ...g.throughput.map(
      (t) =>
        `| ${t.scenario}, best of ${t.repeats} | ${t.proxyMBps} MB/s | ${t.directMBps} MB/s | ${t.ratio} | ${t.proxyCpuMsPerMB} | 0 | |`,
    ),
    '',
    '| Graph delivery memory | held at once | proxy RSS MB before → all held (peak) | RSS per message MB | × message size (target ≤ 3) | replies after graph_timeout_seconds |',
    '| --- | ---: | ---: | ---: | ---: | --- |',
    `| ${m.scenario} | ${m.maxHeldAtOnce} of ${m.messages} | ${m.proxyRssMB.before} → ${m.proxyRssMB.allHeld ?? 'n/a'} (${m.proxyRssMB.peak}) | ${m.rssPerMessageMB ?? 'n/a'} | ${m.perMessageTimesMessageSize ?? 'n/a'} | ${Object.entries(
      m.repliesAfterTimeout,
    )
      .map(([c, n]) => `${c} × ${n}`)
      .join(', ')} |`,
  ];
}
