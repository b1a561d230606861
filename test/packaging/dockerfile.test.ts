import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { withDeadline } from '../helpers/deadline.js';
import { freePort } from '../helpers/ports.js';

/**
 * No Docker engine runs here, so this test performs the Dockerfile's own build and start steps
 * outside Docker — the same commands, the same files — to keep the image recipe from rotting.
 * OS-level steps (apt-get, chown of /data) are reported and skipped; every other RUN runs.
 */

interface Instr {
  op: string;
  args: string;
}

function parseDockerfile(text: string): Instr[][] {
  const joined = text.replace(/\\\r?\n/g, ' ');
  const stages: Instr[][] = [];
  for (const raw of joined.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    if (m[1] === 'FROM') stages.push([]);
    stages.at(-1)?.push({ op: m[1]!, args: m[2]!.trim() });
  }
  return stages;
}

const OS_LEVEL = /^(apt-get|mkdir -p \/data)/;

// npm ci compiles better-sqlite3 from source: minutes on a loaded machine.
const BUDGET_MS = 900_000;

test('the Dockerfile builds and starts (its steps run outside Docker)', { timeout: BUDGET_MS }, async (t) => {
  // A step runs synchronously, so the test's own timeout cannot stop it: each gets what is left.
  const stepsEnd = Date.now() + BUDGET_MS - 60_000;
  const repo = resolve('.');
  const dockerfile = readFileSync(join(repo, 'Dockerfile'), 'utf8');
  const [build, runtime] = parseDockerfile(dockerfile);
  assert.ok(build && runtime, 'a build stage and a runtime stage');
  assert.match(dockerfile, /^FROM node:20[^\s]* AS build$/m, 'built on the official Node 20 image');
  assert.ok(
    runtime.some((i) => i.op === 'USER' && i.args !== 'root'),
    'runs as a non-root user',
  );
  assert.ok(runtime.some((i) => i.op === 'HEALTHCHECK' && i.args.includes('/healthz')));
  const volumes = runtime.find((i) => i.op === 'VOLUME')?.args ?? '';
  assert.match(volumes, /\/data/);
  assert.match(volumes, /\/config/);

  const root = mkdtempSync(join(tmpdir(), 'iop-docker-'));
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const dirs: Record<string, string> = { build: join(root, 'build'), runtime: join(root, 'runtime') };
  const env: Record<string, string> = {};
  let entry: string[] = [];
  let cmd: string[] = [];
  let health: string[] = [];
  for (const [name, stage] of [
    ['build', build],
    ['runtime', runtime],
  ] as const) {
    const dir = dirs[name]!;
    mkdirSync(dir, { recursive: true });
    for (const { op, args } of stage) {
      if (op === 'COPY') {
        const parts = args.split(/\s+/);
        const from = parts[0]!.startsWith('--from=') ? parts.shift()!.slice('--from='.length) : null;
        const dest = parts.pop()!;
        for (const src of parts) {
          const source = from ? join(dirs[from]!, src.replace(/^\/app\/?/, '')) : join(repo, src);
          const target =
            dest.endsWith('/') || parts.length > 1 ? join(dir, dest, src.split('/').pop()!) : join(dir, dest);
          cpSync(source, target, { recursive: true });
        }
      } else if (op === 'RUN') {
        if (OS_LEVEL.test(args)) {
          t.diagnostic(`skipped OS-level step: ${args.slice(0, 60)}`);
          continue;
        }
        execFileSync('sh', ['-c', args], {
          cwd: dir,
          stdio: 'pipe',
          env: { ...process.env, ...env },
          timeout: Math.max(1, stepsEnd - Date.now()),
        });
      } else if (op === 'ENV') {
        for (const m of args.matchAll(/(\w+)=(\S+)/g)) env[m[1]!] = m[2]!;
      } else if (op === 'ENTRYPOINT') entry = JSON.parse(args) as string[];
      else if (op === 'CMD') cmd = JSON.parse(args) as string[];
      else if (op === 'HEALTHCHECK')
        health = JSON.parse(args.slice(args.indexOf('CMD') + 3).trim()) as string[];
    }
  }
  // tini forwards signals in the image; here node gets them directly.
  const argv = [...entry, ...cmd].filter((a) => a !== '/usr/bin/tini' && a !== '--');
  assert.equal(argv[0], 'node');
  const data = join(root, 'data');
  const ports = { starttls: await freePort(), imaps: await freePort(), admin: await freePort() };
  const runEnv: NodeJS.ProcessEnv = {
    ...process.env,
    ...env,
    IMAP_PROXY_CONFIG: join(dirs.runtime!, 'config', 'example.yaml'),
    IMAP_PROXY_DATA: data,
    IMAP_PROXY_KEY_FILE: join(data, 'master.key'),
    IMAP_PROXY_BIND: '127.0.0.1',
    IMAP_PROXY_STARTTLS_PORT: String(ports.starttls),
    IMAP_PROXY_IMAPS_PORT: String(ports.imaps),
    IMAP_PROXY_ADMIN_PORT: String(ports.admin),
  };
  assert.equal(runEnv.NODE_ENV, 'production');
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), {
    cwd: dirs.runtime,
    env: runEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  t.after(() => child.kill('SIGKILL'));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));

  // The image's HEALTHCHECK command, run as the image would run it.
  const deadline = Date.now() + 30_000;
  let healthy = false;
  while (!healthy && Date.now() < deadline) {
    const r = spawn(health[0]!, health.slice(1), { env: runEnv, stdio: 'ignore' });
    const status = new Promise<number | null>((res) => r.once('exit', res));
    healthy = (await withDeadline(status, 10_000, 'the HEALTHCHECK command').catch(() => null)) === 0;
    if (r.exitCode === null) r.kill('SIGKILL');
    if (!healthy) await new Promise((res) => setTimeout(res, 250));
  }
  assert.ok(healthy, `HEALTHCHECK never passed:\n${output}`);
  assert.ok(!existsDevDependency(dirs.runtime!), 'production dependencies only');
  child.kill('SIGTERM');
  assert.equal(
    await withDeadline(exited, 15_000, 'the proxy to stop after SIGTERM'),
    0,
    `SIGTERM stops the proxy cleanly:\n${output.slice(-2000)}`,
  );
  assert.match(output, /"msg":"stopped"/);
});

function existsDevDependency(dir: string): boolean {
  try {
    readFileSync(join(dir, 'node_modules', 'typescript', 'package.json'));
    return true;
  } catch {
    return false;
  }
}
