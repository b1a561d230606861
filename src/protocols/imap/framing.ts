/** The bounds one splitter enforces; each direction passes its own. */
export interface FramingLimits {
  /** Bytes of command text (all line parts of one command, CRLF and literal bytes excluded). */
  readonly lineBytes: number;
  /** Bytes of one literal. */
  readonly literalBytes: number;
  /** Literals in one command or response. */
  readonly literalsPerCommand: number;
  /** Line and literal bytes of one whole command or response together (unset: no cap beyond the others). */
  readonly commandBytes?: number;
}

const LF = 0x0a;
const CR = 0x0d;
const LBRACE = 0x7b;
const RBRACE = 0x7d;
const PLUS = 0x2b;
const MINUS = 0x2d;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
/** 10 digits cover any literal size a limit below 4 GiB can allow; more is malformed. */
const MAX_LITERAL_DIGITS = 10;

export type LiteralKind = 'sync' | 'plus' | 'minus';

/**
 * One complete command (client side) or response (server side): line parts with CRLF removed, each but the last followed by
 * the literal its `{n}` marker announced (`literals[i]` follows `lines[i]`).
 */
export interface RawCommand {
  readonly lines: readonly Buffer[];
  readonly literals: readonly Buffer[];
}

export type SplitError = 'line_too_long' | 'literal_too_long' | 'too_many_literals' | 'message_too_long';

export interface SplitterSink {
  command(cmd: RawCommand): void;
  /** A synchronizing literal `{n}` was announced: the client waits for `+` before sending it. */
  continuation(size: number): void;
  /** A limit was breached; the splitter ignores all further input. */
  error(reason: SplitError): void;
}

type State = 'line' | 'literal' | 'failed';

/**
 * Parses a trailing `{n}`, `{n+}` or `{n-}` marker without regex; null when there is none.
 * A marker with more digits than any size can have is `too_long`: framing fails closed on it
 * in both directions rather than reading it as text.
 */
export function literalMarker(
  line: Buffer,
): { size: number; kind: LiteralKind; start: number } | 'too_long' | null {
  let i = line.length - 1;
  if (i < 2 || line[i] !== RBRACE) return null;
  i--;
  let kind: LiteralKind = 'sync';
  if (line[i] === PLUS) kind = 'plus';
  else if (line[i] === MINUS) kind = 'minus';
  if (kind !== 'sync') i--;
  const end = i + 1;
  while (i >= 0 && line[i]! >= DIGIT_0 && line[i]! <= DIGIT_9) i--;
  const digits = end - (i + 1);
  if (digits === 0 || i < 0 || line[i] !== LBRACE) return null;
  if (digits > MAX_LITERAL_DIGITS) return 'too_long';
  let size = 0;
  for (let j = i + 1; j < end; j++) size = size * 10 + (line[j]! - DIGIT_0);
  return { size, kind, start: i };
}

/**
 * Byte-level state machine that splits an IMAP stream into commands (client → proxy) or
 * responses (upstream → proxy): one framing for both directions. Line bytes are held
 * up to `lineBytes` (+1 for a CR); literal bytes are counted into a buffer of the announced
 * size, never scanned. Memory stays bounded whatever arrives: a breach fails the splitter.
 * `pause()` from inside `command()` stops parsing right after that command; the bytes
 * behind it are kept untouched for `takePending()` (pipelined input after LOGIN/STARTTLS).
 */
export class Splitter {
  private state: State = 'line';
  private lineChunks: Buffer[] = [];
  private lineLen = 0;
  private cmdLineBytes = 0;
  private lines: Buffer[] = [];
  private literals: Buffer[] = [];
  private literal: Buffer = Buffer.alloc(0);
  private literalFill = 0;
  private paused = false;
  private pending: Buffer[] = [];

  constructor(
    private readonly limits: FramingLimits,
    private readonly sink: SplitterSink,
  ) {}

  push(chunk: Buffer): void {
    if (this.state === 'failed') return;
    if (this.paused) {
      this.pending.push(chunk);
      return;
    }
    this.consume(chunk);
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    const queued = this.pending;
    this.pending = [];
    for (const chunk of queued) {
      if (this.paused || this.state === 'failed') this.pending.push(chunk);
      else this.consume(chunk);
    }
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** True when no part of a command has been read (a clean boundary). */
  get atBoundary(): boolean {
    return this.state === 'line' && this.lineLen === 0 && this.lines.length === 0;
  }

  /** Bytes held: partial command plus unparsed pending input. */
  get bufferedBytes(): number {
    let n = this.lineLen + this.cmdLineBytes + this.literalFill;
    for (const l of this.literals) n += l.length;
    for (const p of this.pending) n += p.length;
    return n;
  }

  /** Removes and returns the raw bytes received behind the last command (while paused). */
  takePending(): Buffer {
    const out = Buffer.concat(this.pending);
    this.pending = [];
    return out;
  }

  private consume(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.state === 'failed') return;
      if (this.paused) {
        this.pending.push(chunk.subarray(pos));
        return;
      }
      if (this.state === 'literal') {
        const take = Math.min(this.literal.length - this.literalFill, chunk.length - pos);
        chunk.copy(this.literal, this.literalFill, pos, pos + take);
        this.literalFill += take;
        pos += take;
        if (this.literalFill === this.literal.length) this.endLiteral();
        continue;
      }
      const lf = chunk.indexOf(LF, pos);
      const end = lf === -1 ? chunk.length : lf;
      // +1 allows the CR of the CRLF still to come.
      if (this.cmdLineBytes + this.lineLen + (end - pos) > this.limits.lineBytes + 1) {
        this.fail('line_too_long');
        return;
      }
      if (end > pos) {
        this.lineChunks.push(chunk.subarray(pos, end));
        this.lineLen += end - pos;
      }
      if (lf === -1) return;
      pos = lf + 1;
      this.endLine();
    }
  }

  private endLine(): void {
    let line = this.lineChunks.length === 1 ? this.lineChunks[0]! : Buffer.concat(this.lineChunks);
    if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
    this.lineChunks = [];
    this.lineLen = 0;
    if (this.cmdLineBytes + line.length > this.limits.lineBytes) {
      this.fail('line_too_long');
      return;
    }
    // Copy: the chunk this came from may be large and must not be retained.
    this.lines.push(Buffer.from(line));
    this.cmdLineBytes += line.length;
    const marker = literalMarker(line);
    if (!marker) {
      this.emit();
      return;
    }
    if (marker === 'too_long' || marker.size > this.limits.literalBytes) {
      this.fail('literal_too_long');
      return;
    }
    if (this.limits.commandBytes !== undefined) {
      let total = this.cmdLineBytes + marker.size;
      for (const l of this.literals) total += l.length;
      if (total > this.limits.commandBytes) {
        this.fail('message_too_long');
        return;
      }
    }
    if (this.literals.length >= this.limits.literalsPerCommand) {
      this.fail('too_many_literals');
      return;
    }
    this.literal = Buffer.allocUnsafe(marker.size);
    this.literalFill = 0;
    this.state = 'literal';
    if (marker.kind === 'sync' && marker.size > 0) this.sink.continuation(marker.size);
    if (marker.size === 0) this.endLiteral();
  }

  private endLiteral(): void {
    this.literals.push(this.literal);
    this.literal = Buffer.alloc(0);
    this.literalFill = 0;
    this.state = 'line';
  }

  private emit(): void {
    const cmd: RawCommand = { lines: this.lines, literals: this.literals };
    this.lines = [];
    this.literals = [];
    this.cmdLineBytes = 0;
    this.sink.command(cmd);
  }

  private fail(reason: SplitError): void {
    this.state = 'failed';
    this.lineChunks = [];
    this.lines = [];
    this.literals = [];
    this.literal = Buffer.alloc(0);
    this.pending = [];
    this.lineLen = 0;
    this.cmdLineBytes = 0;
    this.literalFill = 0;
    this.sink.error(reason);
  }
}
