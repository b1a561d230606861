import { type ChildProcess, fork, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';
import type { Job } from './loadgen.js';

/** Child processes of the benchmark: load generators, fake upstreams, haproxy. All stopped by PID. */

const HERE = import.meta.dirname;
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

function track(c: ChildProcess): ChildProcess {
  live.add(c);
  c.once('exit', () => live.delete(c));
  return c;
}

export interface Generator {
  pid: number;
  run<T>(job: Job, timeoutMs?: number): Promise<T>;
  stop(): Promise<void>;
}

export function startGenerator(): Generator {
  const child = track(
    fork(join(HERE, 'loadgen.ts'), [], { execArgv: ['--import', 'tsx'], stdio: 'inherit' }),
  );
  return {
    pid: child.pid ?? 0,
    run<T>(job: Job, timeoutMs = 600_000): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`load generator job ${job.kind} timed out`)), timeoutMs);
        const onExit = () => {
          clearTimeout(t);
          reject(new Error(`load generator exited during ${job.kind}`));
        };
        child.once('exit', onExit);
        child.once('message', (m: { ok: boolean; result?: T; error?: string }) => {
          clearTimeout(t);
          child.off('exit', onExit);
          if (m.ok) resolve(m.result as T);
          else reject(new Error(m.error));
        });
        child.send(job);
      });
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Runs one job in a fresh generator process and stops it. */
export async function runJob<T>(job: Job): Promise<T> {
  const g = startGenerator();
  try {
    return await g.run<T>(job);
  } finally {
    await g.stop();
  }
}

export interface FakeProc {
  port: number;
  caFile: string;
  stop(): Promise<void>;
}

export async function startFakeProc(): Promise<FakeProc> {
  const child = track(
    fork(join(HERE, 'fake-proc.ts'), [], { execArgv: ['--import', 'tsx'], stdio: 'inherit' }),
  );
  const info = await new Promise<{ port: number; caFile: string }>((resolve, reject) => {
    child.once('message', (m: { port: number; caFile: string }) => resolve(m));
    child.once('exit', () => reject(new Error('fake upstream process exited')));
  });
  return {
    ...info,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export interface HaproxyRoute {
  name: string;
  listen: number;
  target: number;
  /** Terminate the client's TLS (haproxy's own self-signed certificate), as the proxy's TLS listeners do. */
  clientTls?: boolean;
  /** Originate verified TLS to the target, as the proxy does upstream. */
  upstreamCaFile?: string;
}

/**
 * haproxy in TCP mode (the ideal splice) in front of `targets`, or undefined when not installed.
 * With clientTls and upstreamCaFile it does the proxy's crypto work: TLS in, verified TLS out.
 */
export async function startHaproxy(
  dir: string,
  routes: HaproxyRoute[],
): Promise<{ stop(): Promise<void> } | undefined> {
  const cfg = join(dir, 'haproxy.cfg');
  let pem = '';
  if (routes.some((r) => r.clientTls)) {
    const pair = await ensureSelfSigned(join(dir, 'haproxy-tls'), { name: 'haproxy' });
    pem = join(dir, 'haproxy-tls', 'haproxy.pem');
    writeFileSync(pem, readFileSync(pair.certFile) + readFileSync(pair.keyFile).toString(), { mode: 0o600 });
  }
  const bind = (r: HaproxyRoute) => `127.0.0.1:${r.listen}${r.clientTls ? ` ssl crt ${pem}` : ''}`;
  const server = (r: HaproxyRoute) =>
    `127.0.0.1:${r.target}${r.upstreamCaFile ? ` ssl verify required ca-file ${r.upstreamCaFile} sni str(localhost) verifyhost localhost` : ''}`;
  writeFileSync(
    cfg,
    `global\n  maxconn 5000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n${routes
      .map((r) => `listen ${r.name}\n  bind ${bind(r)}\n  server s1 ${server(r)}\n`)
      .join('')}`,
  );
  const child = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const failed = await new Promise<boolean>((resolve) => {
    child.once('error', () => resolve(true));
    child.once('spawn', () => resolve(false));
  });
  if (failed) return undefined;
  track(child);
  const first = routes[0];
  if (first) await waitPort(first.listen, 10_000);
  return {
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function waitPort(port: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    // Polling an external process's port: short back-off, bounded by the deadline.
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on ${port} after ${ms} ms`);
}

/** Resident set size (bytes) of a process and all its descendants (the proxy's primary + workers). */
export function treeRss(pid: number): number {
  let total = 0;
  const visit = (p: number) => {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8');
      total += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
      const kids = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(/\s+/) : []) visit(Number(k));
    } catch {}
  };
  visit(pid);
  return total;
}

/** CPU seconds (user + system) a process and its descendants have used so far. */
export function treeCpuSeconds(pid: number): number {
  let ticks = 0;
  const visit = (p: number) => {
    try {
      // Fields after the ")" that ends the command name: utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]);
      const kids = readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim();
      for (const k of kids ? kids.split(/\s+/) : []) visit(Number(k));
    } catch {}
  };
  visit(pid);
  return ticks / 100; // USER_HZ is 100 on Linux
}
