import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { ClientInfo, LoginHandler, LoginMechanism, LoginOutcome } from '../../core/types.js';
import { clientReply, type FailureReason, isProxyError, type LoginResult } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import { isHttpRequestLine } from '../../net/policy.js';
import { startsLikeProxyHeader } from '../../net/proxyproto.js';
import { splice } from '../../net/splice.js';
import {
  decodeBase64,
  decodeLoginResponse,
  LOGIN_PASSWORD_CHALLENGE,
  LOGIN_USERNAME_CHALLENGE,
  parsePlain,
} from '../../sasl/server.js';
import { COMMANDS, type CommandContext } from './commands.js';
import { type RawCommand, type SplitError, Splitter } from './framing.js';
import { failStream, type RejectReason, type WireLimits } from './limits.js';
import type { SessionState } from './state.js';
import { ParseError, tokenize } from './tokenizer.js';
import * as w from './writer.js';

export interface SessionOptions {
  readonly listener: string;
  readonly tlsMode: 'none' | 'starttls' | 'implicit';
  readonly allowCleartextLogin: boolean;
  readonly secureContext: SecureContext | undefined;
  readonly handler: LoginHandler;
  readonly limits: WireLimits;
  readonly metrics: Metrics;
}

export interface Peer {
  readonly cid: string;
  readonly address: string;
  readonly port: number;
  readonly secure: boolean;
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (tag: string, line: Buffer) => void | Promise<void>;

const SASL_CANCEL = Buffer.from('*');
/** Smallest first chunk that can be told apart as a PROXY header. */
const PROXY_SNIFF_BYTES = 6;

export function newConnectionId(): string {
  return randomBytes(6).toString('base64url');
}

/**
 * One client connection before login: the IMAP pre-auth state machine. Reading is paused
 * while a command is handled, so commands are answered one at a time, in order, and bytes
 * pipelined behind LOGIN or STARTTLS stay unread until the session decides their fate.
 */
export class PreauthSession implements CommandContext {
  private state: SessionState = 'greeting';
  private socket: Duplex;
  private secure: boolean;
  private splitter: Splitter;
  private badCount = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private greetTimer: NodeJS.Timeout | undefined;
  private sasl: { tag: string; next: SaslNext } | undefined;
  private loginAbort: AbortController | undefined;
  private firstChunk = true;
  private endReason = 'client_closed';
  private loginResult: LoginResult | undefined;
  private loginMs: number | undefined;
  private phase: 'preauth' | 'spliced' = 'preauth';
  private readonly started = Date.now();
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

  constructor(
    socket: Duplex,
    private readonly peer: Peer,
    private readonly opts: SessionOptions,
    log: Logger,
  ) {
    this.socket = socket;
    this.secure = peer.secure;
    this.log = log;
    this.splitter = this.newSplitter();
    this.done = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  get currentState(): SessionState {
    return this.state;
  }

  start(): void {
    this.opts.metrics.activeSessions.inc({ listener: this.opts.listener, phase: 'preauth' });
    this.attach(this.socket);
    // The listener may have paused the socket while reading a PROXY header.
    this.socket.resume();
    this.armIdle();
    if (this.opts.limits.greetingDelayMs > 0) {
      this.greetTimer = setTimeout(() => this.greet(), this.opts.limits.greetingDelayMs);
    } else {
      this.greet();
    }
  }

  /** Server shutdown: end a pre-auth session with `* BYE`; spliced sessions are left alone. */
  shutdown(): void {
    if (this.phase === 'preauth' && this.state !== 'closed') this.reject('shutdown', 'Server shutting down');
  }

  // --- state -------------------------------------------------------------------------------

  private setState(next: SessionState): void {
    if (this.state === next) return;
    this.log.trace({ from: this.state, to: next }, 'state');
    this.state = next;
  }

  private newSplitter(): Splitter {
    return new Splitter(this.opts.limits, {
      command: (cmd) => this.onCommand(cmd),
      continuation: () => this.write(w.continuation('Ready for literal data')),
      error: (reason) => this.onSplitError(reason),
    });
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
    this.write(w.untaggedStatus('OK', 'imap-oauth-proxy ready', this.capabilityLine()));
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => this.reject('idle_timeout', 'Autologout; idle too long'),
      this.opts.limits.preauthIdleMs,
    );
  }

  // --- reading -----------------------------------------------------------------------------

  private receive(chunk: Buffer): void {
    if (this.firstChunk) {
      this.firstChunk = false;
      if (chunk.length >= PROXY_SNIFF_BYTES && startsLikeProxyHeader(chunk)) {
        this.reject('proxy_header_untrusted');
        return;
      }
    }
    if (this.state === 'greeting') {
      this.reject('talk_before_greeting');
      return;
    }
    this.splitter.push(chunk);
  }

  private onSplitError(reason: SplitError): void {
    const text: Record<SplitError, string> = {
      line_too_long: 'Command line too long',
      literal_too_long: 'Literal too large',
      too_many_literals: 'Too many literals in one command',
    };
    this.reject(reason, text[reason]);
  }

  private onCommand(cmd: RawCommand): void {
    // Stop reading behind this command; the rest waits in the splitter until we are done.
    this.splitter.pause();
    this.socket.pause();
    this.armIdle();
    queueMicrotask(() => {
      this.dispatch(cmd).then(
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
    this.splitter.resume();
    if (!this.splitter.isPaused && this.state !== ('closed' as SessionState)) this.socket.resume();
  }

  private async dispatch(cmd: RawCommand): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'sasl' && this.sasl) {
      const { tag, next } = this.sasl;
      this.sasl = undefined;
      this.setState('ready');
      if (cmd.literals.length > 0) return this.bad(tag, 'Unexpected literal in SASL response');
      if (cmd.lines[0]!.equals(SASL_CANCEL)) return this.reply(tag, 'BAD', 'Authentication aborted');
      return next(tag, cmd.lines[0]!);
    }
    if (isHttpRequestLine(cmd.lines[0]!)) return this.reject('http_request');
    let parsed: ReturnType<typeof tokenize>;
    try {
      parsed = tokenize(cmd);
    } catch (err) {
      if (err instanceof ParseError) return this.bad(err.tag ?? '*', err.message);
      throw err;
    }
    const spec = COMMANDS.get(parsed.name);
    if (!spec) return this.bad(parsed.tag, 'Unknown command or not allowed before login');
    if (!spec.states.has(this.state)) return this.bad(parsed.tag, 'Command not allowed now');
    try {
      await spec.run(this, parsed.tag, parsed.args);
    } catch (err) {
      if (err instanceof ParseError) return this.bad(parsed.tag, err.message);
      throw err;
    }
  }

  // --- writing (CommandContext) ------------------------------------------------------------

  private write(data: string | Buffer): void {
    if (this.state !== 'closed' && this.socket.writable) this.socket.write(data);
  }

  private reply(tag: string, status: w.Status, text: string, code?: string): void {
    this.write(w.tagged(tag, status, text, code));
  }

  ok(tag: string, text: string, code?: string): void {
    this.reply(tag, 'OK', text, code);
  }

  no(tag: string, text: string, code?: string): void {
    this.reply(tag, 'NO', text, code);
  }

  bad(tag: string, text: string): void {
    this.reply(tag, 'BAD', text);
    this.badCount++;
    if (this.badCount >= this.opts.limits.badCommands)
      this.reject('too_many_bad_commands', 'Too many invalid commands');
  }

  untagged(text: string): void {
    this.write(w.untagged(text));
  }

  private loginAllowed(): boolean {
    return this.secure || this.opts.allowCleartextLogin;
  }

  capabilityLine(): string {
    const caps = ['CAPABILITY', 'IMAP4rev1', 'LITERAL+', 'SASL-IR', 'ID'];
    if (this.opts.tlsMode === 'starttls' && !this.secure) caps.push('STARTTLS');
    if (this.loginAllowed()) caps.push('AUTH=PLAIN', 'AUTH=LOGIN');
    else caps.push('LOGINDISABLED');
    return caps.join(' ');
  }

  logout(tag: string): void {
    this.write(w.untaggedStatus('BYE', 'Logging out'));
    this.ok(tag, 'LOGOUT completed');
    this.close('logout');
  }

  // --- STARTTLS ----------------------------------------------------------------------------

  async startTls(tag: string): Promise<void> {
    if (this.opts.tlsMode !== 'starttls' || !this.opts.secureContext)
      return this.bad(tag, 'STARTTLS not available');
    if (this.secure) return this.bad(tag, 'TLS is already active');
    // Anything the client sent behind STARTTLS would be read as if it came over TLS: refuse.
    if (this.splitter.takePending().length > 0 || this.socket.readableLength > 0) {
      return this.reject('starttls_injection', 'Data after STARTTLS refused');
    }
    this.setState('starttls');
    const raw = this.socket;
    this.detach(raw);
    raw.on('error', () => {});
    await new Promise<void>((resolve) =>
      raw.write(w.tagged(tag, 'OK', 'Begin TLS negotiation now'), () => resolve()),
    );
    if (this.state !== 'starttls') return;
    const tls = new TLSSocket(raw as Socket, { isServer: true, secureContext: this.opts.secureContext });
    this.socket = tls;
    tls.once('secure', () => {
      if (this.state !== 'starttls') return;
      this.secure = true;
      this.splitter = this.newSplitter();
      this.attach(tls);
      this.armIdle();
      this.setState('ready');
      this.log.debug({ protocol: tls.getProtocol() }, 'STARTTLS complete');
      tls.resume();
    });
    tls.once('error', (err) => {
      if (this.state === 'starttls') {
        this.log.debug({ err: { message: err.message } }, 'STARTTLS handshake failed');
        this.reject('tls_handshake');
      }
    });
    tls.once('close', () => {
      raw.destroy();
      this.close('client_closed');
    });
  }

  // --- authentication ----------------------------------------------------------------------

  async authenticate(tag: string, mechanism: string, initial: string | null): Promise<void> {
    if (mechanism !== 'PLAIN' && mechanism !== 'LOGIN')
      return this.no(tag, 'Unsupported authentication mechanism');
    if (!this.loginAllowed()) return this.refusePrivacy(tag);
    if (mechanism === 'PLAIN') {
      const plain: SaslNext = (t, line) => {
        const msg = decodeBase64(line);
        if (msg === null) return this.bad(t, 'Invalid base64');
        const p = parsePlain(msg);
        if (!p.ok && p.why === 'malformed') return this.bad(t, 'Malformed PLAIN response');
        if (!p.ok)
          return this.no(t, 'Authorization identity must be empty or the login name', 'AUTHORIZATIONFAILED');
        return this.login(t, 'AUTHENTICATE PLAIN', p.authcid, p.password);
      };
      if (initial !== null) return plain(tag, Buffer.from(initial === '=' ? '' : initial, 'latin1'));
      return this.expectSasl(tag, '', plain);
    }
    const password =
      (user: string): SaslNext =>
      (t, line) => {
        const pass = decodeLoginResponse(line);
        if (pass === null) return this.bad(t, 'Invalid base64');
        return this.login(t, 'AUTHENTICATE LOGIN', user, pass);
      };
    const username: SaslNext = (t, line) => {
      const user = decodeLoginResponse(line);
      if (user === null || user.length === 0) return this.bad(t, 'Invalid base64');
      return this.expectSasl(t, LOGIN_PASSWORD_CHALLENGE, password(user));
    };
    if (initial !== null && initial !== '=') return username(tag, Buffer.from(initial, 'latin1'));
    return this.expectSasl(tag, LOGIN_USERNAME_CHALLENGE, username);
  }

  private expectSasl(tag: string, challenge: string, next: SaslNext): void {
    this.sasl = { tag, next };
    this.setState('sasl');
    this.write(w.continuation(challenge));
  }

  private refusePrivacy(tag: string): void {
    this.countLogin('privacy_required', 0);
    const r = clientReply('privacy_required');
    this.no(tag, r.text, r.code);
  }

  private countLogin(result: LoginResult, seconds: number): void {
    this.loginResult = result;
    this.loginMs = Math.round(seconds * 1000);
    this.opts.metrics.logins.inc({ result });
    this.opts.metrics.loginSeconds.observe({ result }, seconds);
  }

  async login(tag: string, mechanism: LoginMechanism, login: string, password: string): Promise<void> {
    if (!this.loginAllowed()) return this.refusePrivacy(tag);
    this.setState('login');
    clearTimeout(this.idleTimer);
    const abort = new AbortController();
    this.loginAbort = abort;
    const t0 = process.hrtime.bigint();
    const client: ClientInfo = {
      cid: this.peer.cid,
      address: this.peer.address,
      port: this.peer.port,
      listener: this.opts.listener,
      secure: this.secure,
      log: this.log,
    };
    // Set by the timer before it settles the race, so a late outcome is always given back.
    let late = false;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<LoginOutcome>((resolve) => {
      timer = setTimeout(() => {
        late = true;
        abort.abort(new Error('login timeout'));
        resolve({ ok: false, reason: 'timeout' });
      }, this.opts.limits.loginTimeoutMs);
    });
    const call = this.callHandler({ login, password, mechanism, client }, abort.signal).then((o) => {
      if (late) discardOutcome(o);
      return o;
    });
    const outcome = await Promise.race([call, timedOut]);
    clearTimeout(timer);
    this.loginAbort = undefined;
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (this.state !== 'login') {
      // The client went away mid-login: count the attempt so abandoned logins are visible.
      this.opts.metrics.logins.inc({ result: 'aborted' });
      this.opts.metrics.loginSeconds.observe({ result: 'aborted' }, seconds);
      discardOutcome(outcome);
      return;
    }
    this.countLogin(outcome.ok ? 'success' : outcome.reason, seconds);
    const account = outcome.ok ? outcome.accountLabel : outcome.account;
    if (account !== undefined) this.log = this.log.child({ account });
    if (!outcome.ok) {
      this.log.info({ mechanism, result: outcome.reason }, 'login failed');
      const r = clientReply(outcome.reason);
      this.no(tag, outcome.clientText ? `${r.text}. ${outcome.clientText}` : r.text, r.code);
      this.setState('ready');
      this.armIdle();
      return;
    }
    this.log.info({ mechanism }, 'login ok');
    const caps = outcome.upstream.capabilities;
    const code = caps.length > 0 ? `CAPABILITY ${caps.join(' ')}` : undefined;
    this.write(w.tagged(tag, 'OK', 'Logged in', code));
    this.spliceTo(outcome);
  }

  private async callHandler(
    req: Parameters<LoginHandler['login']>[0],
    signal: AbortSignal,
  ): Promise<LoginOutcome> {
    try {
      return await this.opts.handler.login(req, signal);
    } catch (err) {
      const reason: FailureReason = isProxyError(err) ? err.reason : 'upstream_unavailable';
      if (!isProxyError(err)) this.log.error({ err }, 'login handler threw');
      return isProxyError(err) && err.clientText
        ? { ok: false, reason, clientText: err.clientText }
        : { ok: false, reason };
    }
  }

  private spliceTo(outcome: Extract<LoginOutcome, { ok: true }>): void {
    this.setState('spliced');
    this.phase = 'spliced';
    this.opts.metrics.activeSessions.dec({ listener: this.opts.listener, phase: 'preauth' });
    this.opts.metrics.activeSessions.inc({ listener: this.opts.listener, phase: 'spliced' });
    const client = this.socket;
    this.detach(client);
    if ('setKeepAlive' in client) (client as Socket).setKeepAlive(true, 60_000);
    const pipelined = this.splitter.takePending();
    splice({
      client,
      upstream: outcome.upstream,
      pipelined,
      metrics: this.opts.metrics,
      release: outcome.release,
    }).then(
      (stats) => this.finish('spliced_end', stats),
      (err: unknown) => {
        this.log.error({ err }, 'splice failed');
        this.finish('splice_error');
      },
    );
  }

  // --- ending ------------------------------------------------------------------------------

  private reject(reason: RejectReason, byeText?: string): void {
    if (this.state === 'closed') return;
    this.opts.metrics.preauthRejections.inc({ reason });
    this.log.info({ reason }, 'connection refused before login');
    this.close(reason, byeText === undefined ? undefined : w.untaggedStatus('BYE', byeText));
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
    if (wasLogin) this.loginAbort?.abort(new Error('client disconnected'));
    this.detach(this.socket);
    this.socket.on('error', () => {});
    failStream(this.socket);
    this.finish(reason);
  }

  private finishedOnce = false;

  private finish(reason: string, stats?: { clientToUpstream: number; upstreamToClient: number }): void {
    if (this.finishedOnce) return;
    this.finishedOnce = true;
    this.opts.metrics.activeSessions.dec({ listener: this.opts.listener, phase: this.phase });
    // The one summary line per session an admin greps for: how it ended and what it moved.
    this.log.info(
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

/** Gives back an upstream the session can no longer use (late or abandoned login). */
function discardOutcome(outcome: LoginOutcome | undefined): void {
  if (outcome?.ok) {
    outcome.upstream.socket.destroy();
    outcome.release();
  }
}
