import { Duplex } from 'node:stream';

/**
 * One end of an in-process connection. A write is pushed into the other end's readable side;
 * when that side is full the write's callback waits for its next `_read`, so the writer's own
 * buffer fills and `write()` returns false until the reader catches up ('drain').
 */
class PairEnd extends Duplex {
  other: PairEnd | undefined;
  /** Callback of the other end's write, held until this end's reader wants more. */
  private waiting: ((err?: Error | null) => void) | undefined;

  override _read(): void {
    const cb = this.waiting;
    this.waiting = undefined;
    cb?.();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    const other = this.other;
    if (!other || other.destroyed) {
      cb(new Error('the other end of the pair is closed'));
      return;
    }
    if (other.push(chunk)) cb();
    else other.waiting = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    // Like a FIN: the other end reads what is buffered, then 'end'.
    if (this.other && !this.other.destroyed) this.other.push(null);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const other = this.other;
    this.other = undefined;
    // A write of the other end waiting on this reader would otherwise never complete.
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.();
    // Like a reset connection: the other end closes too (without an error of its own).
    if (other && !other.destroyed) other.destroy();
    cb(err);
  }
}

/** Two connected in-process Duplex ends (what one writes, the other reads), with backpressure. */
export function duplexPair(opts: { highWaterMark?: number } = {}): [Duplex, Duplex] {
  const options = opts.highWaterMark === undefined ? {} : { highWaterMark: opts.highWaterMark };
  const a = new PairEnd(options);
  const b = new PairEnd(options);
  a.other = b;
  b.other = a;
  return [a, b];
}
