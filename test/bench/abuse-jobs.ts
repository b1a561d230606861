import { BenchConn, type Target } from './imap.js';

/**
 * Load generator jobs for hostile clients: connections that trickle commands without logging in,
 * and a password spray over made-up user names. Each is bounded by its deadline and its count.
 */

export type TrickleJob = {
  kind: 'trickle';
  target: Target;
  slots: number;
  /** Time over which the slots first connect. */
  rampMs: number;
  /** One NOOP per admitted connection this often. */
  everyMs: number;
  /** A refused or closed slot connects again after this long. */
  retryMs: number;
  durationMs: number;
};

export type SprayJob = {
  kind: 'spray';
  target: Target;
  connections: number;
  attempts: number;
  users: number;
  durationMs: number;
};

const live = new Set<BenchConn>();

/** Sleeps `ms`, never past the deadline. */
const nap = (ms: number, deadline: number) =>
  new Promise((r) => setTimeout(r, Math.max(0, Math.min(ms, deadline - performance.now()))));

/** The deadline ends every connection, which wakes every pending read. */
function endAt(deadline: number): NodeJS.Timeout {
  return setTimeout(
    () => {
      for (const c of live) c.destroy();
    },
    Math.max(0, deadline - performance.now()),
  );
}

async function open(target: Target): Promise<BenchConn> {
  const c = await BenchConn.open(target, 10_000);
  live.add(c);
  c.socket.once('close', () => live.delete(c));
  return c;
}

/** Words of a server's goodbye, without anything the client sent. */
const reason = (line: string) => line.replace(/^\S+ /, '').slice(0, 60);

export async function trickleJob(j: TrickleJob) {
  const t0 = performance.now();
  const deadline = t0 + j.durationMs;
  const timer = endAt(deadline);
  const r = {
    slots: j.slots,
    admitted: 0,
    refused: 0,
    connectErrors: 0,
    closedByServer: 0,
    noops: 0,
    openNow: 0,
    maxOpen: 0,
    goodbyes: {} as Record<string, number>,
  };
  const slot = async (i: number) => {
    await nap((i * j.rampMs) / j.slots, deadline);
    while (performance.now() < deadline) {
      let c: BenchConn;
      try {
        c = await open(j.target);
      } catch {
        r.connectErrors++;
        await nap(j.retryMs, deadline);
        continue;
      }
      try {
        const greeting = await c.line().catch(() => '* closed without a greeting');
        if (!greeting.startsWith('* OK')) {
          r.refused++;
          r.goodbyes[reason(greeting)] = (r.goodbyes[reason(greeting)] ?? 0) + 1;
        } else {
          r.admitted++;
          r.maxOpen = Math.max(r.maxOpen, ++r.openNow);
          try {
            for (let n = 0; performance.now() < deadline; n++) {
              // Jitter so the slots do not send in lock-step.
              await nap(j.everyMs * (0.75 + Math.random() / 2), deadline);
              if (performance.now() >= deadline) break;
              c.write(`N${n} NOOP\r\n`);
              for (;;) {
                const l = await c.line();
                if (l.startsWith('* BYE')) r.goodbyes[reason(l)] = (r.goodbyes[reason(l)] ?? 0) + 1;
                if (l.startsWith(`N${n} `)) break;
              }
              r.noops++;
            }
          } finally {
            r.openNow--;
          }
        }
      } catch {
        if (performance.now() < deadline) r.closedByServer++;
      } finally {
        c.destroy();
      }
      await nap(j.retryMs, deadline);
    }
  };
  await Promise.all(Array.from({ length: j.slots }, (_x, i) => slot(i)));
  clearTimeout(timer);
  return { ...r, elapsed: (performance.now() - t0) / 1000 };
}

export async function sprayJob(j: SprayJob) {
  const t0 = performance.now();
  const deadline = t0 + j.durationMs;
  const timer = endAt(deadline);
  const r = { attempts: 0, badCredentials: 0, limited: 0, refusedAtAccept: 0, other: 0, connections: 0 };
  const more = () => r.attempts < j.attempts && performance.now() < deadline;
  const lane = async () => {
    while (more()) {
      let c: BenchConn;
      try {
        c = await open(j.target);
        r.connections++;
      } catch {
        r.attempts++;
        r.refusedAtAccept++;
        continue;
      }
      try {
        const greeting = await c.line().catch(() => '');
        if (!greeting.startsWith('* OK')) {
          // Closed at accept (a locked address or the per-address bound): the guess never reached a check.
          r.attempts++;
          r.refusedAtAccept++;
          continue;
        }
        while (more()) {
          const n = r.attempts++;
          c.write(`S LOGIN nobody${n % j.users}@nowhere.example wrong-guess-${n}\r\n`);
          let l = await c.line();
          while (!l.startsWith('S ')) l = await c.line();
          if (l.includes('[AUTHENTICATIONFAILED]')) r.badCredentials++;
          else if (l.includes('[LIMIT]')) r.limited++;
          else r.other++;
        }
      } catch {
        // Closed by the server after too many failures on one connection: connect again.
      } finally {
        c.destroy();
      }
    }
  };
  await Promise.all(Array.from({ length: j.connections }, lane));
  clearTimeout(timer);
  return { ...r, elapsed: (performance.now() - t0) / 1000 };
}
