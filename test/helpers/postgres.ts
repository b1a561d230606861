import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './ports.js';

/**
 * A private PostgreSQL server (15 on Debian 12) for tests: initdb into a temp dir (as the `postgres` OS user
 * when running as root, since the server refuses to run as root), listening on 127.0.0.1 on a
 * port picked here with its unix socket inside the temp dir, password (SCRAM) auth on TCP.
 * `database()` creates a fresh database per test and returns its URL.
 */

export interface TestPostgres {
  host: string;
  port: number;
  /** Superuser password (a secret: tests check it never reaches the logs). */
  password: string;
  /** URL of the `postgres` maintenance database. */
  adminUrl: string;
  dir: string;
  pid: number;
  /** Creates an empty database and returns its URL (with the password). */
  database(name?: string): Promise<string>;
  /** Runs a PostgreSQL client binary (psql, pg_dump) as the server's OS user against this server. */
  tool(bin: string, args: string[]): Promise<string>;
  /** Server log so far (stderr). */
  readLog(): string;
  stop(): Promise<void>;
}

/** PG_BIN, else the newest /usr/lib/postgresql/<version>/bin (Debian keeps server binaries off PATH). */
function findBin(): string {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  return join(root, versions[0] ?? '15', 'bin');
}

const BIN = findBin();
const HOST = '127.0.0.1';
const READY_MS = 20_000;
const STOP_MS = 10_000;
const run = promisify(execFile);
const live = new Map<number, string>();

// Last resort when a test run dies without calling stop(): never leave a server behind.
function killLive(): void {
  for (const [pid, dir] of live) {
    try {
      process.kill(pid, 'SIGQUIT');
    } catch {}
    rmSync(dir, { recursive: true, force: true });
  }
}
process.once('exit', killLive);

/** uid/gid to run the server as: `postgres` when we are root, else ourselves. */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
  return { uid, gid };
}

let dbCounter = 0;

export async function startPostgres(): Promise<TestPostgres> {
  if (!existsSync(join(BIN, 'postgres'))) {
    throw new Error(`PostgreSQL binaries not found in ${BIN} (install postgresql: test/interop/install.sh)`);
  }
  const user = serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'iop-pg-'));
  const data = join(dir, 'data');
  const password = randomBytes(18).toString('base64url');
  const as = { ...(user ?? {}), env: { ...process.env, LC_ALL: 'C', PGTZ: 'UTC' } };
  try {
    if (user) chownSync(dir, user.uid, user.gid);
    const pwfile = join(dir, 'pw');
    writeFileSync(pwfile, `${password}\n`, { mode: 0o600 });
    if (user) chownSync(pwfile, user.uid, user.gid);
    await run(
      join(BIN, 'initdb'),
      [
        '-D',
        data,
        '-U',
        'postgres',
        '--pwfile',
        pwfile,
        '--auth-local=trust',
        '--auth-host=scram-sha-256',
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
        '--no-instructions',
      ],
      { ...as, timeout: 60_000 },
    );
    rmSync(pwfile);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  // freePort's port can be taken before the server binds: retry a few times.
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort(HOST);
    try {
      return await launch(dir, data, port, password, as);
    } catch (err) {
      lastErr = err;
    }
  }
  rmSync(dir, { recursive: true, force: true });
  throw lastErr;
}

async function launch(
  dir: string,
  data: string,
  port: number,
  password: string,
  as: { uid?: number; gid?: number; env: NodeJS.ProcessEnv },
): Promise<TestPostgres> {
  // Durability off: a test database is thrown away, and fsyncs would dominate the run time.
  const child: ChildProcess = spawn(
    join(BIN, 'postgres'),
    [
      '-D',
      data,
      '-c',
      `listen_addresses=${HOST}`,
      '-c',
      `port=${port}`,
      '-c',
      `unix_socket_directories=${dir}`,
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'max_connections=60',
      '-c',
      'shared_buffers=16MB',
    ],
    { ...as, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  const pid = child.pid;
  if (pid === undefined) throw new Error('postgres did not start');
  live.set(pid, dir);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`postgres not ready after ${READY_MS} ms:\n${log}`)),
      READY_MS,
    );
    const onExit = () => fail(new Error(`postgres exited before it was ready:\n${log}`));
    function fail(err: Error) {
      clearTimeout(timer);
      child.off('exit', onExit);
      reject(err);
    }
    child.stderr!.on('data', (b: Buffer) => {
      log += b.toString();
      if (log.includes('database system is ready to accept connections')) {
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve();
      }
    });
    child.once('exit', onExit);
  }).catch(async (err: unknown) => {
    await stopPid(pid, exited);
    live.delete(pid);
    throw err;
  });

  const url = (db: string) => `postgres://postgres:${encodeURIComponent(password)}@${HOST}:${port}/${db}`;
  let stopped = false;
  return {
    host: HOST,
    port,
    password,
    adminUrl: url('postgres'),
    dir,
    pid,
    async database(name = `t${process.pid}_${dbCounter++}`) {
      const c = new pg.Client({ connectionString: url('postgres') });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
      } finally {
        await c.end();
      }
      return url(name);
    },
    async tool(bin, args) {
      const { stdout } = await run(
        join(BIN, bin),
        ['-h', dir, '-p', String(port), '-U', 'postgres', ...args],
        {
          ...as,
          timeout: 30_000,
          maxBuffer: 64 * 1024 * 1024,
        },
      );
      return stdout;
    },
    readLog: () => log,
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        await stopPid(pid, exited);
      } finally {
        live.delete(pid);
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** `pg_ctl stop -m immediate` by PID: SIGQUIT to the postmaster, SIGKILL if it lingers. */
async function stopPid(pid: number, exited: Promise<void>): Promise<void> {
  try {
    process.kill(pid, 'SIGQUIT');
  } catch {
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((r) => {
    timer = setTimeout(() => r('timeout'), STOP_MS);
  });
  const r = await Promise.race([exited, timeout]);
  clearTimeout(timer);
  if (r === 'timeout') {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
    await exited;
  }
}
