const LF = 0x0a;
const CR = 0x0d;

export interface LineSink {
  /** One line with its CRLF (or bare LF) removed. */
  line(line: Buffer): void;
  /** A line went past the limit; the splitter ignores all further input. */
  tooLong(): void;
}

/**
 * Splits a line-based protocol's stream (SMTP, POP3) into lines, holding at most `maxBytes`
 * (+1 for a CR) of an unfinished line. `pause()` from inside `line()` stops right after that
 * line; the bytes behind it stay untouched for `takePending()` (pipelined input behind a
 * login or STARTTLS), and `resume()` goes on with them.
 */
export class LineSplitter {
  private pending: Buffer = Buffer.alloc(0);
  private paused = false;
  private failed = false;

  constructor(
    private readonly maxBytes: number,
    private readonly sink: LineSink,
  ) {}

  get isPaused(): boolean {
    return this.paused;
  }

  push(chunk: Buffer): void {
    if (this.failed) return;
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.drain();
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    if (!this.paused || this.failed) return;
    this.paused = false;
    this.drain();
  }

  /** Bytes received but not yet split (everything after a pause); the splitter forgets them. */
  takePending(): Buffer {
    const rest = this.pending;
    this.pending = Buffer.alloc(0);
    return rest;
  }

  private drain(): void {
    while (!this.paused && !this.failed) {
      const lf = this.pending.indexOf(LF);
      if (lf === -1) {
        // A CR may still be waiting for its LF: one byte of grace.
        if (this.pending.length > this.maxBytes + 1) this.fail();
        return;
      }
      const end = lf > 0 && this.pending[lf - 1] === CR ? lf - 1 : lf;
      if (end > this.maxBytes) {
        this.fail();
        return;
      }
      const line = this.pending.subarray(0, end);
      this.pending = this.pending.subarray(lf + 1);
      this.sink.line(line);
    }
  }

  private fail(): void {
    this.failed = true;
    this.pending = Buffer.alloc(0);
    this.sink.tooLong();
  }
}
