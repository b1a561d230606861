import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { until, withDeadline } from './deadline.js';
import { ownUntilExit, removeDir, stopChild } from './dovecot.js';

/**
 * A real SMTP server that records what it is given (aiosmtpd, smtp_sink.py): the relay
 * target behind Dovecot submission, so a test can compare the bytes a client sent with the
 * bytes that were delivered. Each message is on disk before the sink answers 250.
 */

export interface SinkMessage {
  mailFrom: string;
  rcptTos: string[];
  /** The DATA content as received: dot-unstuffed, line endings as sent. */
  data: Buffer;
}

export interface SmtpSink {
  port: number;
  /** Every message recorded so far, in the order they were accepted. */
  messages(): SinkMessage[];
  /** Resolves once at least `count` messages are recorded; rejects after `ms`. */
  waitFor(count: number, ms: number): Promise<SinkMessage[]>;
  stop(): Promise<void>;
}

const PYTHON = '/usr/bin/python3';
const SCRIPT = fileURLToPath(new URL('./smtp_sink.py', import.meta.url));
const READY_MS = 15_000;

/** Envelope files, complete ones only (each is renamed into place after its message). */
const envelopes = (dir: string) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();

function readMessages(dir: string): SinkMessage[] {
  return envelopes(dir).map((f) => {
    const base = join(dir, f.slice(0, -'.json'.length));
    const env = JSON.parse(readFileSync(`${base}.json`, 'utf8')) as { mailFrom: string; rcptTos: string[] };
    return { mailFrom: env.mailFrom, rcptTos: env.rcptTos, data: readFileSync(`${base}.eml`) };
  });
}

export async function startSmtpSink(): Promise<SmtpSink> {
  const dir = mkdtempSync(join(tmpdir(), 'iop-smtp-sink-'));
  const child = spawn(PYTHON, [SCRIPT, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  ownUntilExit(child, dir);
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  const ready = new Promise<number>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^READY (\d+)$/m.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('error', (e) => reject(new Error(`cannot run ${PYTHON}: ${e.message}`)));
    child.once('exit', (code, sig) => reject(new Error(`smtp sink exited (${code ?? sig}) during start`)));
  });
  let port: number;
  try {
    port = await withDeadline(ready, READY_MS, 'the SMTP sink to listen');
  } catch (e) {
    await stopChild(child);
    removeDir(dir);
    throw new Error(`${(e as Error).message}\n${err}`);
  }
  return {
    port,
    messages: () => readMessages(dir),
    waitFor: async (count, ms) => {
      try {
        await until(() => envelopes(dir).length >= count, ms, `${count} message(s) at the sink`, 20);
      } catch {
        throw new Error(
          `SMTP sink got ${envelopes(dir).length} of ${count} message(s) within ${ms} ms\n${err}`,
        );
      }
      return readMessages(dir);
    },
    stop: async () => {
      await stopChild(child);
      removeDir(dir);
    },
  };
}
