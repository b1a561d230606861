import type { Duplex } from 'node:stream';
import type { Logger } from '../../log.js';
import { failStream } from '../../net/limits.js';
import { line, lines } from './replies.js';

export interface Envelope {
  /** Reverse-path without the angle brackets; '' for the null sender `<>`. */
  readonly from: string;
  /** Forward-paths without angle brackets, in RCPT order, as the client sent them. */
  readonly recipients: readonly string[];
  /** BODY= parameter of MAIL (7BIT when absent). */
  readonly body: '7BIT' | '8BITMIME';
}

/** One SMTP reply, e.g. { code: 250, enhanced: '2.0.0', text: 'Queued as ...' }. */
export interface TransactionReply {
  readonly code: number;
  readonly enhanced: string;
  readonly text: string;
}

/** Where complete messages go. The session holds one message in memory, as the chunks it read. */
export interface MessageSink {
  /**
   * May this session start a message of about `declaredSize` bytes (MAIL's SIZE=, 0 when not
   * given)? Return a reply to refuse it (e.g. 452 4.3.1 over the in-flight budget), else undefined.
   * Called at MAIL; `release` below is called once for every accepted MAIL.
   */
  reserve(declaredSize: number): TransactionReply | undefined;
  /**
   * Bytes held grew/shrank (the in-flight budget tracks them); may refuse mid-DATA with a reply.
   * After a refusal (or a message over the size limit) the session drops what it held and
   * calls `hold(-n)` for the n bytes of earlier calls that were not refused.
   */
  hold(bytes: number): TransactionReply | undefined;
  /** Ends a reservation (delivered, refused, RSET, connection closed): frees what `hold` counted. */
  release(): void;
  /**
   * Delivers one complete message: `message` is the exact bytes after dot-unstuffing (DATA) or
   * the concatenated chunks (BDAT), CRLF line ends as sent. Resolves with the reply for the client
   * (250 only when the message was accepted by the far end); never rejects. `signal` aborts when
   * the client connection is gone (the deliverer may finish or abort; nothing is answered).
   * The array is handed over: the session keeps no reference to it, so the sink may empty it
   * once it no longer needs the pieces (they are then free to be collected).
   */
  deliver(
    envelope: Envelope,
    message: Buffer[],
    size: number,
    signal: AbortSignal,
  ): Promise<TransactionReply>;
}

export interface TransactionOptions {
  readonly serverName: string;
  /** SIZE advertised and enforced (bytes). */
  readonly maxMessageBytes: number;
  readonly maxRecipients: number;
  /** Longest command line (not DATA lines). */
  readonly lineBytes: number;
  /** Idle time between commands (and inside DATA) before `421 4.4.2` and close. */
  readonly idleMs: number;
  readonly sink: MessageSink;
  readonly log: Logger;
  /** Bad commands in a row before `421` and close (default 10). */
  readonly badCommands?: number;
}

/** EHLO keywords this session implements (the front door advertises exactly these). */
export function transactionExtensions(maxMessageBytes: number): string[] {
  return ['PIPELINING', '8BITMIME', `SIZE ${maxMessageBytes}`, 'ENHANCEDSTATUSCODES', 'CHUNKING'];
}

/**
 * Runs the session on `stream` (already authenticated) until QUIT, idle timeout or close.
 * `done` resolves once the session is over and a delivery it started has settled (so the
 * sink's reservation is released).
 */
export function runTransactions(stream: Duplex, opts: TransactionOptions): { readonly done: Promise<void> } {
  const session = new TransactionSession(stream, opts);
  session.start();
  return { done: session.done };
}

const CR = 0x0d;
const LF = 0x0a;
const DOT = 0x2e;
const CR_BYTE = Buffer.from([CR]);
const DEFAULT_BAD_COMMANDS = 10;
/** Pieces shorter than this are copied into a shared block instead of kept as their own Buffer. */
const SMALL_PIECE = 1024;
const BLOCK_BYTES = 16 * 1024;
/** RFC 5321 §4.5.3.1.3: a path is at most 256 octets. */
const MAX_PATH = 256;
/** BDAT sizes and SIZE= values: more digits than this cannot be a message we accept. */
const MAX_DIGITS = 15;

/**
 * command: reading command lines; data: reading DATA until CRLF.CRLF; bdat: counting a BDAT
 * chunk's bytes; delivering: the sink has a complete message (reading paused); closed: done.
 */
export type TransactionState = 'command' | 'data' | 'bdat' | 'delivering' | 'closed';

/** Where the DATA reader is inside a line (for dot-unstuffing and the end marker). */
type DotState = 'start' | 'mid' | 'cr' | 'dot' | 'dotcr';

const R = {
  ok: { code: 250, enhanced: '2.0.0', text: 'OK' },
  senderOk: { code: 250, enhanced: '2.1.0', text: 'Sender OK' },
  recipientOk: { code: 250, enhanced: '2.1.5', text: 'Recipient OK' },
  startData: { code: 354, enhanced: '', text: 'Start mail input; end with <CRLF>.<CRLF>' },
  vrfy: { code: 252, enhanced: '2.5.0', text: 'Cannot verify the user, but will accept the message' },
  help: {
    code: 214,
    enhanced: '2.0.0',
    text: 'Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY',
  },
  unknown: { code: 500, enhanced: '5.5.2', text: 'Command not recognized' },
  lineTooLong: { code: 500, enhanced: '5.5.2', text: 'Line too long' },
  authenticated: { code: 503, enhanced: '5.5.1', text: 'Already authenticated' },
  tlsNow: { code: 503, enhanced: '5.5.1', text: 'STARTTLS not possible now' },
  notImplemented: { code: 502, enhanced: '5.5.1', text: 'Command not implemented' },
  nested: { code: 503, enhanced: '5.5.1', text: 'Sender already specified' },
  needMail: { code: 503, enhanced: '5.5.1', text: 'Need MAIL before RCPT' },
  noTransaction: { code: 503, enhanced: '5.5.1', text: 'No valid sender and recipients' },
  mixed: { code: 503, enhanced: '5.5.1', text: 'DATA not allowed after BDAT in the same transaction' },
  tooManyRecipients: { code: 452, enhanced: '4.5.3', text: 'Too many recipients' },
  tooBig: { code: 552, enhanced: '5.3.4', text: 'Message size exceeds fixed maximum message size' },
  unknownParam: { code: 555, enhanced: '5.5.4', text: 'Parameter not recognized' },
  nonAscii: { code: 553, enhanced: '5.6.7', text: 'Non-ASCII address needs SMTPUTF8, which is not offered' },
  deliverFailed: { code: 451, enhanced: '4.3.0', text: 'Delivery failed; try again later' },
} satisfies Record<string, TransactionReply>;

/** One reply line; 354 carries no enhanced code (RFC 2034 §3). */
function format(r: TransactionReply): string {
  return r.enhanced === '' ? lines(r.code, [r.text]) : line(r.code, r.enhanced, r.text);
}

const syntax = (text: string): TransactionReply => ({
  code: 501,
  enhanced: '5.5.4',
  text: `Syntax: ${text}`,
});

interface Transaction {
  readonly from: string;
  readonly body: Envelope['body'];
  readonly recipients: string[];
  /** Set by the first DATA or BDAT: the two may not be mixed (RFC 3030 §3). */
  style?: 'data' | 'bdat';
}

/**
 * The message being read, as the pieces read off the wire (never one concatenated copy);
 * pieces too small to be worth a Buffer each (a client writing byte by byte) share a block.
 */
class MessageBuffer {
  private chunks: Buffer[] = [];
  size = 0;
  /** What the sink counted through `hold` (given back when the message is dropped). */
  held = 0;
  /** Set once the message cannot be accepted: the rest is read and dropped, this is the reply. */
  refusal: TransactionReply | undefined;
  private block: Buffer | undefined;
  private blockUsed = 0;

  constructor(
    private readonly max: number,
    private readonly sink: MessageSink,
  ) {}

  /** Adds the pieces one read produced, counted against the size limit and the sink's budget. */
  add(pieces: readonly Buffer[]): void {
    if (this.refusal) return;
    let n = 0;
    for (const p of pieces) n += p.length;
    if (n === 0) return;
    if (this.size + n > this.max) {
      this.refuse(R.tooBig);
      return;
    }
    const no = this.sink.hold(n);
    if (no) {
      this.refuse(no);
      return;
    }
    this.held += n;
    this.size += n;
    for (const p of pieces) this.keep(p);
  }

  /** A BDAT chunk that cannot fit is refused before any of it is held. */
  expect(n: number): void {
    if (!this.refusal && this.size + n > this.max) this.refuse(R.tooBig);
  }

  /** The message as read, small pieces' block sealed; handed over (this buffer keeps none of it). */
  finish(): Buffer[] {
    this.seal();
    const out = this.chunks;
    this.chunks = [];
    this.block = undefined;
    return out;
  }

  private keep(p: Buffer): void {
    if (p.length >= SMALL_PIECE) {
      this.seal();
      this.chunks.push(p);
      return;
    }
    if (!this.block || this.block.length - this.blockUsed < p.length) {
      this.seal();
      this.block = Buffer.allocUnsafe(BLOCK_BYTES);
      this.blockUsed = 0;
    }
    p.copy(this.block, this.blockUsed);
    this.blockUsed += p.length;
  }

  /** Moves the block's filled part into the list; the rest of the block stays in use. */
  private seal(): void {
    if (!this.block || this.blockUsed === 0) return;
    this.chunks.push(this.block.subarray(0, this.blockUsed));
    this.block = this.block.subarray(this.blockUsed);
    this.blockUsed = 0;
  }

  private refuse(reply: TransactionReply): void {
    this.refusal = reply;
    this.chunks.length = 0;
    this.block = undefined;
    if (this.held > 0) this.sink.hold(-this.held);
    this.held = 0;
  }
}

type Handler = (s: TransactionSession, args: string) => void;

/** The commands, as data; anything else is `500 5.5.2`. */
const COMMANDS: ReadonlyMap<string, Handler> = new Map<string, Handler>([
  ['EHLO', (s, a) => s.ehlo(a, true)],
  ['HELO', (s, a) => s.ehlo(a, false)],
  ['MAIL', (s, a) => s.mail(a)],
  ['RCPT', (s, a) => s.rcpt(a)],
  ['DATA', (s, a) => s.data(a)],
  ['BDAT', (s, a) => s.bdat(a)],
  ['RSET', (s, a) => s.rset(a)],
  ['NOOP', (s) => s.reply(R.ok)],
  ['QUIT', (s) => s.quit()],
  ['VRFY', (s) => s.reply(R.vrfy)],
  ['HELP', (s) => s.reply(R.help)],
  ['AUTH', (s) => s.bad(R.authenticated)],
  ['STARTTLS', (s) => s.bad(R.tlsNow)],
  ['EXPN', (s) => s.bad(R.notImplemented)],
]);

/**
 * One authenticated SMTP connection's mail transactions (RFC 5321, 1870, 2920, 3030, 6152,
 * 2034), read byte by byte: command lines are framed by LF, DATA is scanned for CRLF.CRLF and
 * dot-unstuffed, BDAT chunks are counted, never scanned. Replies go out in command order;
 * while a message is delivered, or the client does not read its replies, nothing is read.
 */
class TransactionSession {
  private state: TransactionState = 'command';
  /** Bytes read but not yet consumed. */
  private pending: Buffer = Buffer.alloc(0);
  /** Discarding the rest of a command line that was too long. */
  private discarding = false;
  private tx: Transaction | undefined;
  /** Whether the sink's reservation for `tx` is still to be released. */
  private reserved = false;
  private message: MessageBuffer | undefined;
  private dot: DotState = 'start';
  private bdatLeft = 0;
  private bdatLast = false;
  /** The reply a BDAT chunk gets once read when it belongs to no valid transaction. */
  private bdatRefusal: TransactionReply | undefined;
  private badInRow = 0;
  private writeBlocked = false;
  private inputEnded = false;
  private delivery: Promise<void> | undefined;
  private readonly abort = new AbortController();
  private idleTimer: NodeJS.Timeout | undefined;
  private log: Logger;
  private resolveDone!: () => void;
  readonly done: Promise<void>;

  constructor(
    private readonly stream: Duplex,
    private readonly opts: TransactionOptions,
  ) {
    this.log = opts.log;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  start(): void {
    this.stream.on('data', this.onData);
    this.stream.on('end', this.onEnd);
    this.stream.on('error', this.onError);
    this.stream.on('close', this.onClose);
    this.stream.on('drain', this.onDrain);
    this.armIdle();
    this.stream.resume();
  }

  // --- stream plumbing -----------------------------------------------------------------------

  private readonly onData = (chunk: Buffer): void => {
    if (this.state === 'closed') return;
    this.armIdle();
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.pump();
  };

  private readonly onEnd = (): void => {
    this.inputEnded = true;
    this.pump();
  };

  private readonly onError = (err: Error): void => {
    this.log.debug(
      { err: { message: err.message, code: (err as NodeJS.ErrnoException).code } },
      'stream error',
    );
    this.close('stream_error');
  };

  private readonly onClose = (): void => this.close('client_closed');

  private readonly onDrain = (): void => {
    if (!this.writeBlocked) return;
    this.writeBlocked = false;
    // A client reading its replies slowly is not idle.
    this.armIdle();
    this.pump();
  };

  private setState(next: TransactionState): void {
    if (this.state === next) return;
    this.log.trace({ from: this.state, to: next }, 'transaction state');
    this.state = next;
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      if (this.state === 'delivering' || this.state === 'closed') return;
      this.log.info({ state: this.state }, 'idle timeout');
      this.close(
        'idle_timeout',
        line(421, '4.4.2', `${this.opts.serverName} Idle too long, closing connection`),
      );
    }, this.opts.idleMs);
  }

  /** Consumes what is pending as far as the state allows, then lets the stream flow or not. */
  private pump(): void {
    try {
      this.consume();
    } catch (err) {
      // A sink or logger that throws must not take the process down with it.
      this.log.error({ err }, 'transaction session failed');
      this.close(
        'internal_error',
        line(421, '4.3.0', `${this.opts.serverName} Internal error, closing connection`),
      );
    }
  }

  private consume(): void {
    while (this.state !== 'closed' && this.state !== 'delivering' && !this.writeBlocked) {
      if (this.pending.length === 0 && !(this.state === 'bdat' && this.bdatLeft === 0)) break;
      if (this.state === 'command') {
        if (!this.commandStep()) break;
      } else if (this.state === 'data') this.dataStep();
      else if (this.state === 'bdat') this.bdatStep();
    }
    if (this.state === 'closed') return;
    if (this.inputEnded && this.state !== 'delivering' && !this.writeBlocked) {
      this.close(this.state === 'command' ? 'client_closed' : 'client_closed_mid_message');
      return;
    }
    if (this.state === 'delivering' || this.writeBlocked) this.stream.pause();
    else this.stream.resume();
  }

  reply(r: TransactionReply): void {
    this.badInRow = 0;
    this.write(format(r));
  }

  /** A refused command: answered and counted toward the bad-commands-in-a-row cap. */
  bad(r: TransactionReply): void {
    this.write(format(r));
    if (++this.badInRow >= (this.opts.badCommands ?? DEFAULT_BAD_COMMANDS)) {
      this.log.info({ bad: this.badInRow }, 'too many bad commands');
      this.close('too_many_bad_commands', line(421, '4.7.0', `${this.opts.serverName} Too many errors`));
    }
  }

  private write(text: string): void {
    if (this.state === 'closed' || !this.stream.writable) return;
    // A client that sends commands but does not read the replies is read no further.
    if (!this.stream.write(text)) this.writeBlocked = true;
  }

  // --- command lines -------------------------------------------------------------------------

  /** One command line, if complete; false when more bytes are needed. */
  private commandStep(): boolean {
    const lf = this.pending.indexOf(LF);
    if (this.discarding) {
      this.pending = lf === -1 ? Buffer.alloc(0) : this.pending.subarray(lf + 1);
      if (lf !== -1) this.discarding = false;
      return lf !== -1;
    }
    if (lf === -1) {
      // One byte of grace for a CR still waiting for its LF.
      if (this.pending.length <= this.opts.lineBytes + 1) return false;
      this.pending = Buffer.alloc(0);
      this.discarding = true;
      this.bad(R.lineTooLong);
      return true;
    }
    const end = lf > 0 && this.pending[lf - 1] === CR ? lf - 1 : lf;
    const cmd = this.pending.subarray(0, end);
    this.pending = this.pending.subarray(lf + 1);
    if (end > this.opts.lineBytes) this.bad(R.lineTooLong);
    else this.dispatch(cmd.toString('latin1'));
    return true;
  }

  private dispatch(text: string): void {
    const sp = text.indexOf(' ');
    const verb = (sp === -1 ? text : text.slice(0, sp)).toUpperCase();
    const handler = COMMANDS.get(verb);
    if (!handler) {
      this.bad(R.unknown);
      return;
    }
    handler(this, sp === -1 ? '' : text.slice(sp + 1));
  }

  ehlo(args: string, extended: boolean): void {
    const domain = args.trim();
    if (domain.length === 0 || domain.length > 255 || /[\s\x00-\x1f\x7f]/.test(domain)) {
      this.bad(syntax(`${extended ? 'EHLO' : 'HELO'} domain-or-address`));
      return;
    }
    // RFC 5321 §4.1.4: a new EHLO/HELO is an implicit RSET (the login stands).
    this.endTransaction('ehlo');
    this.badInRow = 0;
    if (!extended) {
      this.write(`250 ${this.opts.serverName}\r\n`);
      return;
    }
    const greeting = `${this.opts.serverName} Hello ${domain.slice(0, 64)}`;
    this.write(lines(250, [greeting, ...transactionExtensions(this.opts.maxMessageBytes)]));
  }

  mail(args: string): void {
    if (this.tx) {
      this.bad(R.nested);
      return;
    }
    const parsed = parsePathCommand(args, 'FROM');
    if (typeof parsed === 'string') {
      this.bad(syntax(parsed));
      return;
    }
    const { path, params } = parsed;
    const checked = checkPath(path, true);
    if (checked) {
      this.bad(checked);
      return;
    }
    const p = mailParams(params, this.opts.maxMessageBytes);
    if ('refusal' in p) {
      // Too big is an answer, not a client error.
      if (p.refusal === R.tooBig) this.reply(p.refusal);
      else this.bad(p.refusal);
      return;
    }
    const { size, body } = p;
    const refused = this.opts.sink.reserve(size);
    if (refused) {
      this.reply(refused);
      return;
    }
    this.reserved = true;
    this.tx = { from: path, body, recipients: [] };
    this.log.debug({ from: path, size, body }, 'mail transaction started');
    this.reply(R.senderOk);
  }

  rcpt(args: string): void {
    if (!this.tx) {
      this.bad(R.needMail);
      return;
    }
    const parsed = parsePathCommand(args, 'TO');
    if (typeof parsed === 'string') {
      this.bad(syntax(parsed));
      return;
    }
    const checked = checkPath(parsed.path, false);
    if (checked) {
      this.bad(checked);
      return;
    }
    // No DSN or other RCPT parameters are offered.
    if (parsed.params.length > 0) {
      this.bad(R.unknownParam);
      return;
    }
    if (this.tx.recipients.length >= this.opts.maxRecipients) {
      this.reply(R.tooManyRecipients);
      return;
    }
    this.tx.recipients.push(parsed.path);
    this.log.debug({ to: parsed.path }, 'recipient');
    this.reply(R.recipientOk);
  }

  data(args: string): void {
    if (args.trim() !== '') {
      this.bad(syntax('DATA'));
      return;
    }
    if (!this.tx || this.tx.recipients.length === 0) {
      this.bad(R.noTransaction);
      return;
    }
    if (this.tx.style === 'bdat') {
      this.bad(R.mixed);
      return;
    }
    this.tx.style = 'data';
    this.message = new MessageBuffer(this.opts.maxMessageBytes, this.opts.sink);
    this.dot = 'start';
    this.setState('data');
    this.reply(R.startData);
  }

  bdat(args: string): void {
    const m = /^(\d+)(?: +(LAST))? *$/i.exec(args.trim());
    if (!m) {
      this.bad(syntax('BDAT <octets> [LAST]'));
      return;
    }
    const digits = m[1] ?? '';
    const n = digits.length > MAX_DIGITS ? Number.POSITIVE_INFINITY : Number(digits);
    this.bdatLeft = n;
    this.bdatLast = m[2] !== undefined;
    this.bdatRefusal = undefined;
    if (!this.tx || this.tx.recipients.length === 0) this.bdatRefusal = R.noTransaction;
    else if (this.tx.style === 'data') this.bdatRefusal = R.mixed;
    else {
      this.tx.style = 'bdat';
      this.message ??= new MessageBuffer(this.opts.maxMessageBytes, this.opts.sink);
      this.message.expect(n);
    }
    // The chunk is read whatever the verdict: its bytes are not commands.
    this.setState('bdat');
  }

  rset(args: string): void {
    if (args.trim() !== '') {
      this.bad(syntax('RSET'));
      return;
    }
    this.endTransaction('rset');
    this.reply(R.ok);
  }

  quit(): void {
    this.write(`221 2.0.0 ${this.opts.serverName} closing connection\r\n`);
    this.close('quit');
  }

  // --- DATA ----------------------------------------------------------------------------------

  /**
   * Scans pending bytes for the end of DATA (CRLF "." CRLF, strictly: a bare LF never ends a
   * message), removing the dot that stuffs a line beginning with ".". Keeps slices, not copies.
   */
  private dataStep(): void {
    const buf = this.pending;
    const pieces: Buffer[] = [];
    let seg = 0;
    let i = 0;
    let ended = false;
    scan: while (i < buf.length) {
      switch (this.dot) {
        case 'mid': {
          const cr = buf.indexOf(CR, i);
          if (cr === -1) {
            i = buf.length;
            break scan;
          }
          i = cr + 1;
          this.dot = 'cr';
          break;
        }
        case 'cr':
          if (buf[i] === LF) {
            i++;
            this.dot = 'start';
          } else this.dot = 'mid';
          break;
        case 'start':
          if (buf[i] === DOT) {
            if (i > seg) pieces.push(buf.subarray(seg, i));
            seg = ++i;
            this.dot = 'dot';
          } else this.dot = 'mid';
          break;
        case 'dot':
          if (buf[i] === CR) {
            i++;
            this.dot = 'dotcr';
          } else this.dot = 'mid';
          break;
        case 'dotcr':
          if (buf[i] === LF) {
            ended = true;
            i++;
            break scan;
          }
          // ".\r" then something else: the CR was data after all (held back if it came in an earlier read).
          if (i === 0) pieces.push(CR_BYTE);
          this.dot = 'mid';
          break;
      }
    }
    // A "." CR at the end of this read may still be the end marker: its CR is held back.
    if (!ended) {
      const keepTo = this.dot === 'dotcr' ? i - 1 : i;
      if (keepTo > seg) pieces.push(buf.subarray(seg, keepTo));
    }
    this.pending = buf.subarray(i);
    this.message?.add(pieces);
    if (ended) this.messageComplete();
  }

  // --- BDAT ----------------------------------------------------------------------------------

  /** Counts a BDAT chunk's bytes off the wire; at its end, answers it or delivers the message. */
  private bdatStep(): void {
    const take = Math.min(this.bdatLeft, this.pending.length);
    if (take > 0) {
      const piece = this.pending.subarray(0, take);
      this.pending = this.pending.subarray(take);
      this.bdatLeft -= take;
      if (!this.bdatRefusal) this.message?.add([piece]);
    }
    if (this.bdatLeft > 0) return;
    this.setState('command');
    if (this.bdatRefusal) {
      this.bad(this.bdatRefusal);
      return;
    }
    const refusal = this.message?.refusal;
    if (refusal) {
      // RFC 3030 §2: the transaction has failed; later chunks in the pipeline are read and dropped.
      this.endTransaction('refused');
      this.reply(refusal);
      return;
    }
    if (this.bdatLast) {
      this.messageComplete();
      return;
    }
    this.reply({ code: 250, enhanced: '2.0.0', text: `${this.message?.size ?? 0} octets received` });
  }

  // --- delivery ------------------------------------------------------------------------------

  private messageComplete(): void {
    const tx = this.tx;
    const msg = this.message;
    this.setState('command');
    if (!tx || !msg) return;
    if (msg.refusal) {
      const r = msg.refusal;
      this.endTransaction('refused');
      this.log.info({ size: msg.size, code: r.code }, 'message refused');
      this.reply(r);
      return;
    }
    this.setState('delivering');
    clearTimeout(this.idleTimer);
    this.stream.pause();
    const envelope: Envelope = { from: tx.from, recipients: [...tx.recipients], body: tx.body };
    const size = msg.size;
    const started = Date.now();
    let delivery: Promise<TransactionReply>;
    try {
      delivery = this.opts.sink.deliver(envelope, msg.finish(), size, this.abort.signal);
    } catch (err) {
      delivery = Promise.reject(err);
    }
    this.delivery = delivery
      .catch((err: unknown) => {
        this.log.error({ err }, 'delivery failed unexpectedly');
        return R.deliverFailed;
      })
      .then((r) => {
        this.delivery = undefined;
        this.endTransaction('delivered');
        this.log.info(
          { size, recipients: envelope.recipients.length, code: r.code, ms: Date.now() - started },
          'delivery result',
        );
        if (this.state === 'closed') return this.finish();
        this.setState('command');
        this.reply(r);
        this.armIdle();
        this.pump();
      });
  }

  /** Ends the transaction (if any) and gives back the sink's reservation, exactly once. */
  private endTransaction(why: string): void {
    if (this.delivery) return;
    if (this.tx) this.log.debug({ why }, 'transaction ended');
    this.tx = undefined;
    this.message = undefined;
    if (!this.reserved) return;
    this.reserved = false;
    this.opts.sink.release();
  }

  // --- ending --------------------------------------------------------------------------------

  private close(reason: string, lastWords?: string): void {
    if (this.state === 'closed') return;
    if (lastWords !== undefined) this.write(lastWords);
    const midMessage = this.state === 'data' || this.state === 'bdat';
    this.setState('closed');
    clearTimeout(this.idleTimer);
    this.log.debug({ reason, midMessage }, 'transaction session end');
    this.stream.off('data', this.onData);
    this.stream.off('drain', this.onDrain);
    this.stream.on('error', () => {});
    failStream(this.stream);
    this.pending = Buffer.alloc(0);
    if (this.delivery) {
      // The deliverer learns the client is gone; the reservation ends when it settles.
      this.abort.abort(new Error('client connection closed'));
      return;
    }
    this.endTransaction(reason);
    this.finish();
  }

  private finished = false;

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onClose);
    this.resolveDone();
  }
}

// --- envelope syntax ---------------------------------------------------------------------------

/** MAIL parameters (RFC 1870 SIZE, RFC 6152 BODY); anything else is not offered. */
function mailParams(
  params: readonly string[],
  max: number,
): { size: number; body: Envelope['body'] } | { refusal: TransactionReply } {
  let size = 0;
  let body: Envelope['body'] = '7BIT';
  const seen = new Set<string>();
  for (const p of params) {
    const eq = p.indexOf('=');
    const key = (eq === -1 ? p : p.slice(0, eq)).toUpperCase();
    const value = eq === -1 ? undefined : p.slice(eq + 1);
    if (seen.has(key)) return { refusal: syntax(`${key} given twice`) };
    seen.add(key);
    if (key === 'SIZE') {
      if (value === undefined || !/^\d+$/.test(value)) return { refusal: syntax('SIZE=<octets>') };
      if (value.length > MAX_DIGITS || Number(value) > max) return { refusal: R.tooBig };
      size = Number(value);
    } else if (key === 'BODY') {
      const v = value?.toUpperCase();
      if (v !== '7BIT' && v !== '8BITMIME') return { refusal: R.unknownParam };
      body = v;
    } else return { refusal: R.unknownParam };
  }
  return { size, body };
}

/** `FROM:<a@b> SIZE=1` → path 'a@b', params ['SIZE=1']; a string is what was wrong. */
function parsePathCommand(args: string, keyword: 'FROM' | 'TO'): { path: string; params: string[] } | string {
  const usage = keyword === 'FROM' ? 'MAIL FROM:<address> [parameters]' : 'RCPT TO:<address>';
  const head = `${keyword}:`;
  if (args.slice(0, head.length).toUpperCase() !== head) return usage;
  // Some clients put a space after the colon.
  const rest = args.slice(head.length).replace(/^ +/, '');
  let path: string;
  let after: string;
  if (rest.startsWith('<')) {
    const close = closingBracket(rest);
    if (close === -1) return usage;
    path = rest.slice(1, close);
    after = rest.slice(close + 1);
    if (after !== '' && !after.startsWith(' ')) return usage;
  } else {
    // A bare address (no brackets) from an old client.
    const sp = rest.indexOf(' ');
    path = sp === -1 ? rest : rest.slice(0, sp);
    after = sp === -1 ? '' : rest.slice(sp);
    if (path === '') return usage;
  }
  const params = after.split(' ').filter((p) => p !== '');
  return { path, params };
}

/** Index of the `>` closing the path that starts at 0, skipping quoted parts; -1 when none. */
function closingBracket(s: string): number {
  let quoted = false;
  for (let i = 1; i < s.length; i++) {
    const c = s[i];
    if (quoted && c === '\\') i++;
    else if (c === '"') quoted = !quoted;
    else if (c === '>' && !quoted) return i;
  }
  return -1;
}

const ATEXT = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+";
const DOT_STRING = new RegExp(`^${ATEXT}(?:\\.${ATEXT})*$`);
const QUOTED = /^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$/;
const DOMAIN =
  /^[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/;
const ADDRESS_LITERAL = /^\[[\x21-\x5a\x5e-\x7e]+\]$/;
const ROUTE = /^@[^,:]+(?:,@[^,:]+)*:/;

/** Checks a path's syntax (RFC 5321 §4.1.2, leniently); undefined when fine, else the reply. */
function checkPath(path: string, sender: boolean): TransactionReply | undefined {
  const bad: TransactionReply = sender
    ? { code: 501, enhanced: '5.1.7', text: 'Bad sender address syntax' }
    : { code: 501, enhanced: '5.1.3', text: 'Bad recipient address syntax' };
  if (path === '') return sender ? undefined : bad;
  if (/[\x00-\x1f\x7f]/.test(path) || path.length > MAX_PATH) return bad;
  if (/[^\x00-\x7f]/.test(path)) return R.nonAscii;
  // A source route (obsolete) is accepted and kept as sent.
  const mailbox = path.replace(ROUTE, '');
  if (!sender && mailbox.toLowerCase() === 'postmaster') return undefined;
  const at = mailbox.lastIndexOf('@');
  if (at <= 0) return bad;
  const local = mailbox.slice(0, at);
  const domain = mailbox.slice(at + 1);
  if (!DOT_STRING.test(local) && !QUOTED.test(local)) return bad;
  if (!DOMAIN.test(domain) && !ADDRESS_LITERAL.test(domain)) return bad;
  return undefined;
}
