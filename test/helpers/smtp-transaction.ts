import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../src/log.js';
import { silentLogger } from '../../src/log.js';
import { duplexPair } from '../../src/net/duplex-pair.js';
import {
  type Envelope,
  type MessageSink,
  runTransactions,
  type TransactionOptions,
  type TransactionReply,
} from '../../src/protocols/smtp/transaction.js';
import { withDeadline } from './deadline.js';

export const NAME = 'mx.test';
/** What the test server says before handing the connection to the session (the front door's part). */
export const GREETING = `220 ${NAME} ESMTP ready`;

export interface Delivered {
  envelope: Envelope;
  bytes: Buffer;
  /** The Buffers as the session handed them over. */
  message: readonly Buffer[];
  /** How many Buffers the message came as. */
  chunks: number;
  size: number;
  signal: AbortSignal;
}

/**
 * An in-memory MessageSink that records every call and checks the contract as it goes:
 * one reservation at a time, hold only inside one, deliver only with a complete message,
 * release exactly once per reservation. Broken rules are collected in `violations`.
 */
export class RecordingSink implements MessageSink {
  reserves = 0;
  releases = 0;
  held = 0;
  peakHeld = 0;
  holds = 0;
  readonly delivered: Delivered[] = [];
  readonly violations: string[] = [];
  /** Refuse every MAIL with this reply. */
  reserveReply: TransactionReply | undefined;
  /** Refuse a hold that would take the held bytes past this. */
  holdBudget = Number.POSITIVE_INFINITY;
  deliverReply: TransactionReply = { code: 250, enhanced: '2.0.0', text: 'Delivered' };
  /** When set, deliver waits for it (a slow far end). */
  gate: Promise<void> | undefined;
  /** Resolves at each deliver call (tests wait for "the message reached the sink"). */
  private arrivals: Array<() => void> = [];

  get open(): number {
    return this.reserves - this.releases;
  }

  reserve(_declared: number): TransactionReply | undefined {
    if (this.open !== 0) this.violations.push('reserve while a reservation is open');
    if (this.reserveReply) return this.reserveReply;
    this.reserves++;
    return undefined;
  }

  hold(bytes: number): TransactionReply | undefined {
    this.holds++;
    if (this.open !== 1) this.violations.push('hold outside a reservation');
    if (this.held + bytes < 0) this.violations.push(`held would go negative (${this.held} + ${bytes})`);
    if (bytes > 0 && this.held + bytes > this.holdBudget)
      return { code: 452, enhanced: '4.3.1', text: 'Over the in-flight budget' };
    this.held += bytes;
    this.peakHeld = Math.max(this.peakHeld, this.held);
    return undefined;
  }

  release(): void {
    if (this.open !== 1) this.violations.push('release without a reservation');
    this.releases++;
    this.held = 0;
  }

  async deliver(
    envelope: Envelope,
    message: readonly Buffer[],
    size: number,
    signal: AbortSignal,
  ): Promise<TransactionReply> {
    if (this.open !== 1) this.violations.push('deliver outside a reservation');
    if (envelope.recipients.length === 0) this.violations.push('deliver without recipients');
    const bytes = Buffer.concat(message);
    if (bytes.length !== size) this.violations.push(`size ${size} but ${bytes.length} bytes`);
    this.delivered.push({ envelope, bytes, message, chunks: message.length, size, signal });
    for (const w of this.arrivals.splice(0)) w();
    if (this.gate) await this.gate;
    return this.deliverReply;
  }

  /** Until the next deliver call. */
  arrival(): Promise<void> {
    return new Promise((r) => this.arrivals.push(r));
  }
}

export function sessionOptions(
  sink: MessageSink,
  over: Partial<TransactionOptions> = {},
): TransactionOptions {
  return {
    serverName: NAME,
    maxMessageBytes: 100_000,
    maxRecipients: 5,
    lineBytes: 512,
    idleMs: 10_000,
    sink,
    log: silentLogger as Logger,
    ...over,
  };
}

/**
 * A plain TCP server on 127.0.0.1 whose connections are handed, after a greeting, to the
 * transaction session (as the front door does after AUTH): real SMTP clients can talk to it.
 */
export async function transactionServer(opts: () => TransactionOptions): Promise<{
  port: number;
  sessions: Promise<void>[];
  close: () => Promise<void>;
}> {
  const sessions: Promise<void>[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.write(`${GREETING}\r\n`);
    sessions.push(runTransactions(s, opts()).done);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as AddressInfo).port,
    sessions,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

/**
 * Runs one session in-process on a duplex pair: writes `pieces` (yielding between them), then
 * ends the input (or drops the connection: 'destroy'); resolves with everything the session
 * wrote once it is done.
 */
export async function runOnPair(
  opts: TransactionOptions,
  pieces: readonly Buffer[],
  ms = 5000,
  finish: 'end' | 'destroy' = 'end',
): Promise<{ out: string; client: Duplex }> {
  const [client, server] = duplexPair({ highWaterMark: 64 * 1024 });
  const out: Buffer[] = [];
  client.on('data', (d: Buffer) => out.push(d));
  client.on('error', () => {});
  const closed = new Promise<void>((r) => {
    client.once('close', () => r());
    client.once('end', () => r());
  });
  const { done } = runTransactions(server, opts);
  for (const p of pieces) {
    if (client.destroyed || !client.writable) break;
    client.write(p);
    await new Promise((r) => setImmediate(r));
  }
  if (finish === 'destroy') client.destroy();
  else if (!client.destroyed && client.writable) client.end();
  await withDeadline(Promise.all([done, closed]), ms, 'the session to end');
  return { out: Buffer.concat(out).toString('latin1'), client };
}
