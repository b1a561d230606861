import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClientDriver, ClientTransport, LoginWay } from '../helpers/clients/index.js';
import { redact } from '../helpers/clients/redact.js';
import { type Dovecot, startDovecot } from '../helpers/dovecot.js';
import { startOP, type TestOP } from '../helpers/op.js';
import { type Stack, startStack, testMessage } from '../helpers/stack.js';

/**
 * One oidc-provider and one Dovecot shared by four proxies, one per upstream setting
 * (implicit TLS | STARTTLS) × (XOAUTH2 | OAUTHBEARER). A cell is one real client run against
 * one of them; every cell has its own account, mailbox and seeded message.
 */

export type UpstreamTls = 'implicit' | 'starttls';
export type UpstreamMech = 'xoauth2' | 'oauthbearer';
export interface UpstreamSetting {
  tls: UpstreamTls;
  mechanism: UpstreamMech;
}
export const UPSTREAMS: UpstreamSetting[] = [
  { tls: 'implicit', mechanism: 'xoauth2' },
  { tls: 'implicit', mechanism: 'oauthbearer' },
  { tls: 'starttls', mechanism: 'xoauth2' },
  { tls: 'starttls', mechanism: 'oauthbearer' },
];
export const upstreamKey = (u: UpstreamSetting) => `${u.tls}-${u.mechanism}`;

export interface Interop {
  op: TestOP;
  dovecot: Dovecot;
  stacks: Map<string, Stack>;
  close(): Promise<void>;
}

export async function startInterop(): Promise<Interop> {
  const op = await startOP({ accessTokenTtl: 3600, clientCredentials: true });
  const stacks = new Map<string, Stack>();
  let dovecot: Dovecot | undefined;
  const close = async () => {
    for (const s of stacks.values()) await s.close();
    await dovecot?.stop();
    await op.close();
  };
  try {
    const u = new URL(op.introspection.url);
    u.username = encodeURIComponent(op.introspection.id);
    u.password = encodeURIComponent(op.introspection.secret);
    dovecot = await startDovecot({ introspectionUrl: u.toString() });
    for (const up of UPSTREAMS) {
      const d = dovecot;
      stacks.set(
        upstreamKey(up),
        await startStack({ op, dovecot: d, upstreamTls: up.tls, mechanism: up.mechanism, logLevel: 'debug' }),
      );
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { op, dovecot, stacks, close };
}

export interface Cell {
  client: ClientDriver;
  transport: ClientTransport;
  way: LoginWay;
  upstream: UpstreamSetting;
}

export interface CellResult {
  cell: Cell;
  pass: boolean;
  /** How the client logged in, as the proxy logged it ("login ok" line for this account). */
  observedLogin: string;
  /** Upstream SASL mechanisms this proxy counted as successful (metrics). */
  observedUpstream: string;
  seconds: number;
  /** Why it failed, with the redacted transcript. */
  failure?: string;
  /** The client's own error (exit status, timeout), if it reported one. */
  clientError?: string;
  /** The client's verbose output, redacted. */
  clientOutput: string;
}

export const cellName = (c: Cell) =>
  `${c.client.name} · ${c.transport} · way ${c.way} · upstream ${upstreamKey(c.upstream)}`;

let seq = 0;

export async function runCell(env: Interop, cell: Cell, timeoutMs = 60_000): Promise<CellResult> {
  const t0 = Date.now();
  const stack = env.stacks.get(upstreamKey(cell.upstream))!;
  const login =
    `u${++seq}-${cell.client.name.replace(/\W+/g, '')}-${cell.transport}-${cell.way}`.toLowerCase();
  const acct = await stack.addAccount(login, { upstreamUser: `${login}@example.com` });
  const seeded = testMessage(`interop-${login}`, `Seeded for ${cellName(cell)}.`);
  await env.dovecot.seed(acct.upstreamUser, seeded);
  const workDir = mkdtempSync(join(tmpdir(), 'iop-client-'));
  try {
    const run = await cell.client.fetch({
      host: 'localhost',
      port: cell.transport === 'implicit' ? stack.ports.imaps : stack.ports.starttls,
      transport: cell.transport,
      caFile: stack.proxyCaFile,
      user: login,
      password: acct.password,
      way: cell.way,
      uid: 1,
      workDir,
      timeoutMs,
    });
    const proxyLines = linesFor(stack.logs(), login);
    const observedLogin = loggedMechanisms(proxyLines);
    const observedUpstream = observedLogin === '—' ? '—' : await upstreamSuccesses(stack);
    const expected = cell.client.storesLf ? lf(seeded) : seeded;
    const got = run.message && cell.client.normalize ? cell.client.normalize(run.message) : run.message;
    const bytesOk = got?.equals(expected) === true;
    const wrongUpstream = observedUpstream !== cell.upstream.mechanism.toUpperCase();
    const pass = !run.error && bytesOk && observedLogin !== '—' && !wrongUpstream;
    const secrets = [acct.password, acct.refreshToken ?? '', acct.accessToken ?? ''];
    const clientOutput = redact(run.transcript, login, secrets);
    let failure: string | undefined;
    if (!pass) {
      const why = [
        run.error,
        bytesOk
          ? undefined
          : `fetched bytes differ (got ${run.message?.length ?? 'none'}, want ${expected.length})`,
        observedLogin === '—' ? 'the proxy logged no successful login for this account' : undefined,
        wrongUpstream ? `upstream mechanisms seen: ${observedUpstream}` : undefined,
      ].filter(Boolean);
      failure = redact(
        `${cellName(cell)} failed: ${why.join('; ')}\n--- client transcript ---\n${run.transcript}\n--- proxy log ---\n${proxyLines.map((l) => l.raw).join('\n')}`,
        login,
        secrets,
      );
    }
    return {
      cell,
      pass,
      observedLogin,
      observedUpstream,
      seconds: (Date.now() - t0) / 1000,
      failure,
      clientError: run.error,
      clientOutput,
    };
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

/** CRLF → LF, as clients that store mail in mbox or Maildir files write it. */
export function lf(b: Buffer): Buffer {
  return Buffer.from(b.toString('latin1').replaceAll('\r\n', '\n'), 'latin1');
}

export interface LogLine {
  raw: string;
  parsed: Record<string, unknown> | undefined;
}

/** The proxy's log lines for every connection that named this account. */
export function linesFor(logs: string, login: string): LogLine[] {
  const all = logs
    .split('\n')
    .filter(Boolean)
    .map((raw) => {
      try {
        return { raw, parsed: JSON.parse(raw) as Record<string, unknown> };
      } catch {
        return { raw, parsed: undefined };
      }
    });
  const cids = new Set(all.filter((l) => l.parsed?.account === login).map((l) => l.parsed?.cid));
  return all.filter((l) => l.parsed?.account === login || (l.parsed?.cid && cids.has(l.parsed.cid)));
}

/** How the client logged in, as the proxy's `login ok` lines (or another `msg`) say; '—' when none. */
export function loggedMechanisms(lines: LogLine[], msg = 'login ok'): string {
  return (
    lines
      .map((l) => l.parsed)
      .filter((p) => p?.msg === msg)
      .map((p) => String(p?.mechanism))
      .join(', ') || '—'
  );
}

async function upstreamSuccesses(stack: Stack): Promise<string> {
  const m = await stack.metrics.upstreamAuths.get();
  return [
    ...new Set(
      m.values
        .filter((v) => v.labels.result === 'success' && v.value > 0)
        .map((v) => String(v.labels.mechanism).toUpperCase()),
    ),
  ]
    .sort()
    .join(', ');
}
