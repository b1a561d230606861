import { type SprayJob, sprayJob, type TrickleJob, trickleJob } from './abuse-jobs.js';
import { type Auth, BenchConn, type Target } from './imap.js';
import { type Pop3Auth, Pop3Conn } from './pop3.js';
import { benchMessage, type SmtpAuth, SmtpConn } from './smtp.js';

/**
 * Load generator process (forked by run.ts, IPC in and out): runs one job and replies with
 * its measurements, or for `hold` keeps IDLE sessions open until told to close. Every loop is
 * bounded in count and time.
 */

export type Job =
  | { kind: 'fetch'; target: Target; auth: Auth; mailbox: string; fetch: string; repeat: number }
  | { kind: 'logins'; target: Target; auth: Auth; concurrency: number; durationMs: number; maxCount: number }
  | { kind: 'storm'; target: Target; auth: Auth; count: number }
  | { kind: 'hold'; target: Target; auths: Auth[]; open: number }
  | { kind: 'submit'; target: Target; auth: SmtpAuth; size: number; repeat: number }
  | { kind: 'smtpAuths'; legs: Array<{ target: Target; auth: SmtpAuth }>; count: number }
  | { kind: 'retr'; target: Target; auth: Pop3Auth; repeat: number }
  | { kind: 'pop3Logins'; legs: Array<{ target: Target; auth: Pop3Auth }>; count: number }
  | {
      kind: 'submissions';
      target: Target;
      auth: SmtpAuth;
      size: number;
      concurrency: number;
      durationMs: number;
      maxCount: number;
    }
  | TrickleJob
  | SprayJob
  | { kind: 'pingHeld' }
  | { kind: 'close' };

const INFLIGHT = 64;

async function loginOnce(target: Target, auth: Auth): Promise<BenchConn> {
  const c = await BenchConn.open(target);
  try {
    await c.greeting();
    await c.login(auth);
    return c;
  } catch (err) {
    c.destroy();
    throw err;
  }
}

async function fetchJob(j: Extract<Job, { kind: 'fetch' }>) {
  const c = await loginOnce(j.target, j.auth);
  await c.command('S', `EXAMINE ${j.mailbox}`);
  const seconds: number[] = [];
  let bytes = 0;
  for (let i = 0; i < j.repeat; i++) {
    const t0 = performance.now();
    bytes = await c.countReply(`F${i}`, `FETCH ${j.fetch} BODY.PEEK[]`);
    seconds.push((performance.now() - t0) / 1000);
  }
  c.destroy();
  return { bytes, seconds };
}

async function loginsJob(j: Extract<Job, { kind: 'logins' }>) {
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const deadline = performance.now() + j.durationMs;
  const t0 = performance.now();
  const lane = async () => {
    while (performance.now() < deadline && latenciesMs.length + errors < j.maxCount) {
      const s = performance.now();
      try {
        const c = await loginOnce(j.target, j.auth);
        latenciesMs.push(performance.now() - s);
        c.destroy();
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: j.concurrency }, lane));
  return {
    count: latenciesMs.length,
    errors,
    firstError,
    elapsed: (performance.now() - t0) / 1000,
    latenciesMs,
  };
}

async function stormJob(j: Extract<Job, { kind: 'storm' }>) {
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const conns: BenchConn[] = [];
  await Promise.all(
    Array.from({ length: j.count }, async () => {
      const s = performance.now();
      try {
        conns.push(await loginOnce(j.target, j.auth));
        latenciesMs.push(performance.now() - s);
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
      }
    }),
  );
  for (const c of conns) c.destroy();
  return { count: latenciesMs.length, errors, firstError, latenciesMs };
}

/** One session, `repeat` transactions of one message: DATA-to-250 seconds of each. */
async function submitJob(j: Extract<Job, { kind: 'submit' }>) {
  const message = benchMessage(j.size, 0);
  const c = await SmtpConn.open(j.target);
  try {
    await c.ehlo();
    await c.auth(j.auth);
    const seconds: number[] = [];
    for (let i = 0; i < j.repeat; i++) seconds.push((await c.send(message)) / 1000);
    await c.quit();
    return { bytes: message.length, seconds };
  } finally {
    c.destroy();
  }
}

export type TurnsResult = { count: number; errors: number; firstError?: string; latenciesMs: number[] };

/**
 * Sequential sessions, `count` per leg, the legs taking turns so that all of them see the same
 * load on a shared machine; `once` runs one session and returns the milliseconds it timed.
 */
async function takeTurns<L>(legs: L[], count: number, once: (leg: L) => Promise<number>) {
  const res: TurnsResult[] = legs.map(() => ({ count: 0, errors: 0, latenciesMs: [] }));
  for (let i = 0; i < count; i++) {
    for (const [k, leg] of legs.entries()) {
      const r = res[k]!;
      try {
        r.latenciesMs.push(await once(leg));
        r.count++;
      } catch (err) {
        r.errors++;
        r.firstError ??= (err as Error).message;
      }
    }
  }
  return res;
}

/** The time from sending AUTH to the 235, nothing else. */
function smtpAuthsJob(j: Extract<Job, { kind: 'smtpAuths' }>) {
  return takeTurns(j.legs, j.count, async (leg) => {
    let c: SmtpConn | undefined;
    try {
      c = await SmtpConn.open(leg.target);
      await c.ehlo();
      const t0 = performance.now();
      await c.auth(leg.auth);
      const ms = performance.now() - t0;
      await c.quit();
      return ms;
    } finally {
      c?.destroy();
    }
  });
}

/** The time from sending USER (or AUTH) to the +OK that logs in, nothing else. */
function pop3LoginsJob(j: Extract<Job, { kind: 'pop3Logins' }>) {
  return takeTurns(j.legs, j.count, async (leg) => {
    let c: Pop3Conn | undefined;
    try {
      c = await Pop3Conn.open(leg.target);
      const t0 = performance.now();
      await c.login(leg.auth);
      const ms = performance.now() - t0;
      await c.quit();
      return ms;
    } finally {
      c?.destroy();
    }
  });
}

/** One session, `repeat` RETRs of message 1: the seconds of each. */
async function retrJob(j: Extract<Job, { kind: 'retr' }>) {
  const c = await Pop3Conn.open(j.target);
  try {
    await c.login(j.auth);
    // STAT first: a RETR of a missing message would only end at the deadline.
    const stat = await c.command('STAT');
    if (stat.split(' ')[1] === '0') throw new Error('POP3 mailbox is empty: nothing to RETR');
    const seconds: number[] = [];
    let bytes = 0;
    for (let i = 0; i < j.repeat; i++) {
      const t0 = performance.now();
      bytes = await c.retr(1);
      seconds.push((performance.now() - t0) / 1000);
    }
    await c.quit();
    return { bytes, seconds };
  } finally {
    c.destroy();
  }
}

/** Whole submissions (connect … QUIT) from `concurrency` lanes until the deadline or `maxCount`. */
async function submissionsJob(j: Extract<Job, { kind: 'submissions' }>) {
  const message = benchMessage(j.size, 1);
  let count = 0;
  let errors = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const deadline = t0 + j.durationMs;
  const lane = async () => {
    while (performance.now() < deadline && count + errors < j.maxCount) {
      let c: SmtpConn | undefined;
      try {
        c = await SmtpConn.open(j.target);
        await c.ehlo();
        await c.auth(j.auth);
        await c.send(message);
        await c.quit();
        count++;
      } catch (err) {
        errors++;
        firstError ??= (err as Error).message;
      } finally {
        c?.destroy();
      }
    }
  };
  await Promise.all(Array.from({ length: j.concurrency }, lane));
  return { count, errors, firstError, elapsed: (performance.now() - t0) / 1000 };
}

const held: BenchConn[] = [];

async function holdJob(j: Extract<Job, { kind: 'hold' }>) {
  let opened = 0;
  let failed = 0;
  let firstError: string | undefined;
  let next = 0;
  const lane = async () => {
    while (next < j.open) {
      const i = next++;
      try {
        const c = await loginOnce(j.target, j.auths[i % j.auths.length]!);
        c.write('I IDLE\r\n');
        const l = await c.line();
        if (!l.startsWith('+')) throw new Error(`IDLE refused: ${l.slice(0, 100)}`);
        held.push(c);
        opened++;
      } catch (err) {
        failed++;
        firstError ??= (err as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: INFLIGHT }, lane));
  return { opened, failed, firstError, held: held.filter((c) => !c.socket.destroyed).length };
}

/** Ends IDLE on every held session and sends NOOP: how many still answer. */
async function pingHeldJob() {
  let answered = 0;
  let failed = 0;
  let firstError: string | undefined;
  await Promise.all(
    held.map(async (c, i) => {
      // A session that died would leave the read pending: its socket's close wakes it with an error.
      const t = setTimeout(() => c.destroy(), 30_000);
      try {
        c.write('DONE\r\n');
        await c.tagged('I');
        await c.command(`P${i}`, 'NOOP');
        answered++;
      } catch (err) {
        failed++;
        firstError ??= (err as Error).message;
      } finally {
        clearTimeout(t);
      }
    }),
  );
  return { held: held.length, answered, failed, firstError };
}

async function run(job: Job): Promise<unknown> {
  switch (job.kind) {
    case 'fetch':
      return fetchJob(job);
    case 'logins':
      return loginsJob(job);
    case 'storm':
      return stormJob(job);
    case 'hold':
      return holdJob(job);
    case 'submit':
      return submitJob(job);
    case 'smtpAuths':
      return smtpAuthsJob(job);
    case 'retr':
      return retrJob(job);
    case 'pop3Logins':
      return pop3LoginsJob(job);
    case 'submissions':
      return submissionsJob(job);
    case 'trickle':
      return trickleJob(job);
    case 'spray':
      return sprayJob(job);
    case 'pingHeld':
      return pingHeldJob();
    case 'close':
      for (const c of held) c.destroy();
      setImmediate(() => process.exit(0));
      return { closed: true };
  }
}

process.on('message', (job: Job) => {
  run(job).then(
    (result) => process.send?.({ ok: true, result }),
    (err: unknown) => process.send?.({ ok: false, error: (err as Error).message }),
  );
});
// The orchestrator going away ends the generator too.
process.on('disconnect', () => process.exit(0));
