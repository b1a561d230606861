import { spawn } from 'node:child_process';

export interface ExecResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
  timedOut: boolean;
}

const live = new Set<number>();
// A crashed test run must not leave client processes behind: kill each group by its PID.
process.once('exit', () => {
  for (const pid of live) killGroup(pid);
});

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {}
}

/**
 * Runs a client in its own process group with a hard deadline; on timeout the whole group
 * (offlineimap's threads, mutt's shell) is killed by PID, never by name.
 */
export function execClient(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs: number; cwd?: string; input?: string },
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      detached: true,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const pid = child.pid;
    if (pid === undefined) {
      child.once('error', reject);
      return;
    }
    live.add(pid);
    const out: Buffer[] = [];
    let err = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString('utf8');
    });
    if (child.stdin) {
      // A client that exits before reading its input must not crash the harness.
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input);
    }
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(pid);
    }, opts.timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      live.delete(pid);
      reject(e);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      live.delete(pid);
      // Reap anything the client left in its group (threads' helpers, pipes).
      killGroup(pid);
      resolve({ code, stdout: Buffer.concat(out), stderr: err, timedOut });
    });
  });
}

/** First line of a command's version output. */
export async function versionOf(cmd: string, args: string[], pick: RegExp = /.+/): Promise<string> {
  try {
    const r = await execClient(cmd, args, { timeoutMs: 10_000 });
    const text = `${r.stdout.toString('utf8')}\n${r.stderr}`;
    return pick.exec(text)?.[0]?.trim() ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

export function failure(r: ExecResult, what: string): string | undefined {
  if (r.timedOut) return `${what} timed out`;
  if (r.code !== 0) return `${what} exited with status ${r.code}`;
  return undefined;
}
