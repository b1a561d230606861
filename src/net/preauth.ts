import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { LoginRunner } from '../core/login-runner.js';
import type { ClientInfo, LoginMechanism, LoginRequest, ProtocolName } from '../core/types.js';
import type { FailureReason, LoginResult } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { PreauthGate } from './gate.js';
import { failStream, type RejectReason, type SessionLimits } from './limits.js';
import type { FrontDoorSession, Peer } from './listener.js';
import { startsLikeProxyHeader } from './proxyproto.js';
import { upgradeToTls } from './starttls.js';
import type { TarpitHold } from './tarpit.js';

/**
 * Pre-auth connection states, the same for every protocol. greeting: waiting out the greeting
 * delay; ready: reading commands; sasl: a SASL exchange waits for the client's next line;
 * login: the login runs (reading paused); starttls: TLS handshake; spliced: handed to the
 * byte splice; closed: done.
 */
export type PreauthState = 'greeting' | 'ready' | 'sasl' | 'login' | 'starttls' | 'spliced' | 'closed';

export interface PreauthOptions {
  readonly listener: string;
  readonly tlsMode: 'none' | 'starttls' | 'implicit';
  readonly allowCleartextLogin: boolean;
  readonly secureContext: SecureContext | undefined;
  readonly runner: LoginRunner;
  readonly limits: SessionLimits;
  readonly metrics: Metrics;
  /** Bounds connections not yet logged in, per address and in total (absent: unbounded). */
  readonly gate?: PreauthGate | undefined;
}

/** How a protocol words the outcome of one login. */
export interface LoginReplies {
  failure(reason: FailureReason, clientText: string | undefined): string;
  success(capabilities: readonly string[]): string | Buffer;
}

/** A protocol's framing of client bytes into commands (IMAP's splitter, the line splitter). */
export interface Framing {
  push(chunk: Buffer): void;
  /** From inside a command callback: stop right after that command. */
  pause(): void;
  resume(): void;
  readonly isPaused: boolean;
  /** Bytes received but not yet framed (pipelined input); the framing forgets them. */
  takePending(): Buffer;
}

/** Smallest first chunk that can be told apart as a PROXY header. */
const PROXY_SNIFF_BYTES = 6;

/**
 * Everything a protocol's pre-auth session shares: socket plumbing, the greeting delay, idle
 * and command caps, the STARTTLS upgrade, the login hand-over to the core, and the one summary
 * line per session. A protocol adds its framing, its commands and its words. Reading pauses
 * while a command runs, so replies go out in order and bytes pipelined behind STARTTLS or a
 * login stay unread until the session decides their fate.
 */
export abstract class PreauthBase implements FrontDoorSession {
  protected state: PreauthState = 'greeting';
  protected socket: Duplex;
  protected secure: boolean;
  private badCount = 0;
  private commandCount = 0;
  private failedLogins = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private greetTimer: NodeJS.Timeout | undefined;
  private lifetimeTimer: NodeJS.Timeout | undefined;
  /** Holds a place in the gate until it logs in or closes. */
  private admitted = false;
  private loginAbort: AbortController | undefined;
  /** Present while the connection waits in the tarpit before its goodbye. */
  private tarpitHold: TarpitHold | undefined;
  private quietRefusal = false;
  private firstChunk = true;
  private endReason = 'client_closed';
  private loginResult: LoginResult | undefined;
  private loginMs: number | undefined;
  private phase: 'preauth' | 'spliced' = 'preauth';
  private readonly started = Date.now();
  private framing: Framing | undefined;
  private readonly onData = (chunk: Buffer) => this.receive(chunk);
  private readonly onEnd = () => this.close('client_closed');
  private readonly onError = (err: Error) => {
    this.log.debug(
      { err: { message: err.message, code: (err as NodeJS.ErrnoException).code } },
      'socket error',
    );
    this.close('socket_error');
  };
  private readonly onClose = () => this.close('client_closed');
  /** Gains `account` once a login names one. */
  log: Logger;
  /** Resolves when the session (including any splice) is over. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  protected abstract readonly protocol: ProtocolName;

  constructor(
    socket: Duplex,
    protected readonly peer: Peer,
    protected readonly base: PreauthOptions,
    log: Logger,
  ) {
    this.socket = socket;
    this.secure = peer.secure;
    this.log = log;
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  // --- what each protocol supplies ---------------------------------------------------------

  /** The greeting line(s). */
  protected abstract greeting(): string;
  /** The protocol's last words carrying `text` when it closes a connection before login. */
  protected abstract goodbye(reason: RejectReason, text: string): string;
  /** What to tell a client closed for each reason (absent: close without a word). */
  protected abstract readonly closeTexts: Partial<Record<RejectReason, string>>;
  /** A fresh framing (at start, and for the TLS stream after STARTTLS). */
  protected abstract newFraming(): Framing;
  /** Called once the STARTTLS handshake completed (forget what was learned in cleartext). */
  protected onSecure(): void {}

  get currentState(): PreauthState {
    return this.state;
  }

  start(): void {
    this.framing = this.newFraming();
    this.sessionGauge('preauth').inc();
    const place = this.base.gate?.admit(this.peer.address) ?? 'ok';
    if (place !== 'ok') {
      this.refuseLater(place);
      return;
    }
    this.attach(this.socket);
    // The listener may have paused the socket while reading a PROXY header.
    this.socket.resume();
    this.armIdle();
    this.admitted = this.base.gate !== undefined;
    if (this.base.limits.preauthLifetimeMs > 0) {
      // However busy: a connection that sends a NOOP now and then may not hold a place for ever.
      this.lifetimeTimer = setTimeout(
        () => this.reject('preauth_lifetime'),
        this.base.limits.preauthLifetimeMs,
      );
    }
    if (this.base.limits.greetingDelayMs > 0) {
      this.greetTimer = setTimeout(() => this.greet(), this.base.limits.greetingDelayMs);
    } else {
      this.greet();
    }
  }

  /**
   * A pre-auth bound is full: held in the gate's tarpit (no greeting, nothing answered) and told
   * goodbye when the hold ends, so a client that reconnects at once does so at the tarpit's pace;
   * at once when the tarpit is off or full.
   */
  private refuseLater(place: 'too_many_from_address' | 'too_many_unauthenticated'): void {
    this.tarpitHold = this.base.gate?.tarpit.hold({
      address: this.peer.address,
      socket: this.socket,
      protocol: this.protocol,
      reason: place,
      metrics: this.base.metrics,
      done: () => {
        this.tarpitHold = undefined;
        // The tarpit logged the address once: this refusal goes to the debug log.
        this.quietRefusal = true;
        this.reject(place);
      },
    });
    if (!this.tarpitHold) this.reject(place);
  }

  /** Server shutdown: say goodbye before login; spliced sessions are left alone. */
  shutdown(): void {
    if (this.phase === 'preauth' && this.state !== 'closed') this.reject('shutdown');
  }

  // --- state and plumbing ------------------------------------------------------------------

  protected setState(next: PreauthState): void {
    if (this.state === next) return;
    this.log.trace({ from: this.state, to: next }, 'state');
    this.state = next;
  }

  private attach(s: Duplex): void {
    s.on('data', this.onData);
    s.on('end', this.onEnd);
    s.on('error', this.onError);
    s.on('close', this.onClose);
  }

  private detach(s: Duplex): void {
    s.off('data', this.onData);
    s.off('end', this.onEnd);
    s.off('error', this.onError);
    s.off('close', this.onClose);
  }

  private greet(): void {
    this.greetTimer = undefined;
    if (this.state !== 'greeting') return;
    this.setState('ready');
    this.write(this.greeting());
  }

  protected armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.reject('idle_timeout'), this.base.limits.preauthIdleMs);
  }

  private receive(chunk: Buffer): void {
    if (this.firstChunk) {
      this.firstChunk = false;
      if (chunk.length >= PROXY_SNIFF_BYTES && startsLikeProxyHeader(chunk)) {
        this.reject('proxy_header_untrusted');
        return;
      }
    }
    if (this.state === 'greeting') {
      // A client that talks before the greeting is a bot or a misconfigured device.
      this.reject('talk_before_greeting');
      return;
    }
    this.framing?.push(chunk);
  }

  /**
   * The framing found one complete command: stop reading behind it, enforce the pre-auth
   * command cap, run it, then read on. A connection may not idle along before login for ever
   * (a NOOP every minute) or probe without end.
   */
  protected runCommand(run: () => void | Promise<void>): void {
    // The rest waits in the framing until this command is done.
    this.framing?.pause();
    if (++this.commandCount > this.base.limits.preauthCommands && this.state !== 'sasl') {
      this.reject('too_many_commands');
      return;
    }
    this.socket.pause();
    this.armIdle();
    queueMicrotask(() => {
      Promise.resolve()
        .then(run)
        .then(
          () => this.resumeReading(),
          (err: unknown) => {
            this.log.error({ err }, 'command failed');
            this.close('internal_error');
          },
        );
    });
  }

  private resumeReading(): void {
    if (this.state !== 'ready' && this.state !== 'sasl') return;
    this.framing?.resume();
    if (!this.framing?.isPaused && this.state !== ('closed' as PreauthState)) this.socket.resume();
  }

  protected write(data: string | Buffer): void {
    if (this.state !== 'closed' && this.socket.writable) this.socket.write(data);
  }

  /** A bad or unknown command was answered: too many close the connection. */
  protected countBad(): void {
    this.badCount++;
    if (this.badCount >= this.base.limits.badCommands) this.reject('too_many_bad_commands');
  }

  protected loginAllowed(): boolean {
    return this.secure || this.base.allowCleartextLogin;
  }

  // --- STARTTLS ----------------------------------------------------------------------------

  /**
   * The server side of STARTTLS after the protocol checked it may run: refuses bytes pipelined
   * behind the command (they would count as sent over TLS), writes `goAhead`, handshakes.
   */
  protected async upgrade(goAhead: string): Promise<void> {
    const context = this.base.secureContext;
    if (!context) return;
    if (this.takePending().length > 0 || this.socket.readableLength > 0) {
      // Anything sent behind STARTTLS would be read as if it came over TLS (injection).
      this.reject('starttls_injection');
      return;
    }
    this.setState('starttls');
    const raw = this.socket;
    this.detach(raw);
    const tls = await upgradeToTls(
      raw,
      goAhead,
      context,
      {
        secure: (t) => {
          if (this.state !== 'starttls') return;
          this.secure = true;
          this.framing = this.newFraming();
          this.onSecure();
          this.attach(t);
          this.armIdle();
          this.setState('ready');
          this.countTls(t);
          this.log.debug({ protocol: t.getProtocol() }, 'STARTTLS complete');
          t.resume();
        },
        failed: (err) => {
          if (this.state !== 'starttls') return;
          this.log.debug({ err: { message: err.message } }, 'STARTTLS handshake failed');
          this.reject('tls_handshake');
        },
        closed: () => this.close('client_closed'),
      },
      () => this.state === 'starttls',
    );
    if (tls) this.socket = tls;
  }

  private takePending(): Buffer {
    return this.framing?.takePending() ?? Buffer.alloc(0);
  }

  private countTls(t: TLSSocket): void {
    this.base.metrics.tlsConnections.inc({
      protocol: this.protocol,
      listener: this.base.listener,
      version: t.getProtocol() ?? 'unknown',
    });
  }

  // --- login -------------------------------------------------------------------------------

  /** Counts a login refused because the connection is not encrypted; the protocol writes the reply. */
  protected countPrivacyRefusal(): void {
    this.noteLogin('privacy_required', 0);
    this.base.runner.count(this.protocol, 'privacy_required', 0);
  }

  private noteLogin(result: LoginResult, ms: number): void {
    this.loginResult = result;
    this.loginMs = ms;
  }

  /**
   * Too many wrong passwords on one connection: a guesser is closed, whatever the limiter says.
   * Outages (token endpoint, upstream) are not the client's fault and do not count.
   */
  private countFailedLogin(reason: LoginResult): void {
    if (reason !== 'bad_credentials' && reason !== 'limited') return;
    this.failedLogins++;
    if (this.failedLogins >= this.base.limits.failedLogins) this.reject('too_many_failed_logins');
  }

  /** Runs the login through the core; on success the session is spliced. */
  protected async runLogin(
    mechanism: LoginMechanism,
    login: string,
    password: string,
    replies: LoginReplies,
    extra: Pick<LoginRequest, 'upstreamKeeps'> = {},
  ): Promise<void> {
    this.setState('login');
    clearTimeout(this.idleTimer);
    const abort = new AbortController();
    this.loginAbort = abort;
    const info: ClientInfo = {
      cid: this.peer.cid,
      address: this.peer.address,
      port: this.peer.port,
      listener: this.base.listener,
      secure: this.secure,
      log: this.log,
    };
    const verdict = await this.base.runner.run(
      { protocol: this.protocol, login, password, mechanism, client: info, ...extra },
      abort.signal,
      () => this.socket,
    );
    this.loginAbort = undefined;
    if (verdict.ok === 'aborted') return;
    if (this.state !== 'login') {
      if (verdict.ok) verdict.decline();
      return;
    }
    this.noteLogin(verdict.ok ? 'success' : verdict.reason, verdict.ms);
    if (verdict.account !== undefined) this.log = this.log.child({ account: verdict.account });
    if (!verdict.ok) {
      this.log.info({ mechanism, result: verdict.reason }, 'login failed');
      this.write(replies.failure(verdict.reason, verdict.clientText));
      this.setState('ready');
      this.armIdle();
      this.countFailedLogin(verdict.reason);
      return;
    }
    this.log.info({ mechanism }, 'login ok');
    this.leaveGate();
    this.setState('spliced');
    this.phase = 'spliced';
    this.sessionGauge('preauth').dec();
    this.sessionGauge('spliced').inc();
    const client = this.socket;
    this.detach(client);
    if ('setKeepAlive' in client) (client as Socket).setKeepAlive(true, 60_000);
    verdict.accept(replies.success(verdict.capabilities), this.takePending()).then(
      (stats) => this.finish('spliced_end', stats),
      (err: unknown) => {
        this.log.error({ err }, 'splice failed');
        this.finish('splice_error');
      },
    );
  }

  private sessionGauge(phase: 'preauth' | 'spliced') {
    return this.base.metrics.activeSessions.labels({
      protocol: this.protocol,
      listener: this.base.listener,
      phase,
    });
  }

  // --- ending ------------------------------------------------------------------------------

  /** Closes the connection before login, counted by reason, with the protocol's last words. */
  protected reject(reason: RejectReason, text?: string): void {
    if (this.state === 'closed') return;
    this.base.metrics.preauthRejections.inc({ protocol: this.protocol, reason });
    this.log[this.quietRefusal ? 'debug' : 'info']({ reason }, 'connection refused before login');
    const words = text ?? this.closeTexts[reason];
    this.close(reason, words === undefined ? undefined : this.goodbye(reason, words));
  }

  /** Ends the pre-auth session (never a spliced one: the splice owns that socket). */
  close(reason: string, lastWords?: string): void {
    if (this.state === 'closed' || this.state === 'spliced') return;
    const wasLogin = this.state === 'login';
    this.endReason = reason;
    if (lastWords !== undefined) this.write(lastWords);
    this.setState('closed');
    clearTimeout(this.idleTimer);
    clearTimeout(this.greetTimer);
    this.tarpitHold?.cancel();
    this.leaveGate();
    if (wasLogin) this.loginAbort?.abort(new Error('client disconnected'));
    this.detach(this.socket);
    this.socket.on('error', () => {});
    failStream(this.socket);
    this.finish(reason);
  }

  /** Gives back the place in the gate, once: the connection logged in or closed. */
  private leaveGate(): void {
    clearTimeout(this.lifetimeTimer);
    if (!this.admitted) return;
    this.admitted = false;
    this.base.gate?.release(this.peer.address);
  }

  private finishedOnce = false;

  private finish(reason: string, stats?: { clientToUpstream: number; upstreamToClient: number }): void {
    if (this.finishedOnce) return;
    this.finishedOnce = true;
    this.sessionGauge(this.phase).dec();
    // The one summary line per session an admin greps for: how it ended and what it moved.
    this.log[this.quietRefusal ? 'debug' : 'info'](
      {
        result: this.loginResult ?? 'none',
        reason: this.phase === 'spliced' ? reason : this.endReason,
        secure: this.secure,
        loginMs: this.loginMs ?? null,
        totalMs: Date.now() - this.started,
        bytesIn: stats?.clientToUpstream ?? 0,
        bytesOut: stats?.upstreamToClient ?? 0,
      },
      'session end',
    );
    this.setState('closed');
    this.resolveDone();
  }
}
