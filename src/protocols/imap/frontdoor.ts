import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContext } from 'node:tls';
import type { LoginRunner } from '../../core/login-runner.js';
import type { ClientInfo, LoginMechanism } from '../../core/types.js';
import type { LoginResult } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import { failStream, type RejectReason } from '../../net/limits.js';
import type { FrontDoorSession, Peer } from '../../net/listener.js';
import { isHttpRequestLine } from '../../net/policy.js';
import { startsLikeProxyHeader } from '../../net/proxyproto.js';
import { upgradeToTls } from '../../net/starttls.js';
import {
  decodeBase64,
  decodeLoginResponse,
  LOGIN_PASSWORD_CHALLENGE,
  LOGIN_USERNAME_CHALLENGE,
  parsePlain,
} from '../../sasl/server.js';
import { COMMANDS, type CommandContext } from './commands.js';
import { type RawCommand, type SplitError, Splitter } from './framing.js';
import type { WireLimits } from './limits.js';
import { imapReply, imapReplyText } from './replies.js';
import type { SessionState } from './state.js';
import { ParseError, tokenize } from './tokenizer.js';
import * as w from './writer.js';

export interface SessionOptions {
  readonly listener: string;
  readonly tlsMode: 'none' | 'starttls' | 'implicit';
  readonly allowCleartextLogin: boolean;
  readonly secureContext: SecureContext | undefined;
  readonly runner: LoginRunner;
  readonly limits: WireLimits;
  readonly metrics: Metrics;
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (tag: string, line: Buffer) => void | Promise<void>;

const PROTOCOL = 'imap';
const SASL_CANCEL = Buffer.from('*');
/** Smallest first chunk that can be told apart as a PROXY header. */
const PROXY_SNIFF_BYTES = 6;

/**
 * One client connection before login: the IMAP pre-auth state machine. Reading is paused
 * while a command is handled, so commands are answered one at a time, in order, and bytes
 * pipelined behind LOGIN or STARTTLS stay unread until the session decides their fate.
 */
export class PreauthSession implements CommandContext, FrontDoorSession {
  private state: SessionState = 'greeting';
  private socket: Duplex;
  private secure: boolean;
  private splitter: Splitter;
  private badCount = 0;
  private commandCount = 0;
  private failedLogins = 0;
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
    this.sessionGauge('preauth').inc();
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
      message_too_long: 'Command too long',
    };
    this.reject(reason, text[reason]);
  }

  private onCommand(cmd: RawCommand): void {
    // Stop reading behind this command; the rest waits in the splitter until we are done.
    this.splitter.pause();
    // A connection may not idle along before login for ever (a NOOP every minute) or probe without end.
    if (++this.commandCount > this.opts.limits.preauthCommands && this.state !== 'sasl') {
      this.reject('too_many_commands', 'Too many commands before login');
      return;
    }
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
    // The splitter always emits at least one line; an empty stand-in fails closed like a malformed one.
    const [line = Buffer.alloc(0)] = cmd.lines;
    if (this.state === 'sasl' && this.sasl) {
      const { tag, next } = this.sasl;
      this.sasl = undefined;
      this.setState('ready');
      if (cmd.literals.length > 0) return this.bad(tag, 'Unexpected literal in SASL response');
      if (line.equals(SASL_CANCEL)) return this.reply(tag, 'BAD', 'Authentication aborted');
      return next(tag, line);
    }
    if (isHttpRequestLine(line)) return this.reject('http_request');
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
    const tls = await upgradeToTls(
      raw,
      w.tagged(tag, 'OK', 'Begin TLS negotiation now'),
      this.opts.secureContext,
      {
        secure: (t) => {
          if (this.state !== 'starttls') return;
          this.secure = true;
          this.splitter = this.newSplitter();
          this.attach(t);
          this.armIdle();
          this.setState('ready');
          this.log.debug({ protocol: t.getProtocol() }, 'STARTTLS complete');
          this.opts.metrics.tlsConnections.inc({
            protocol: PROTOCOL,
            listener: this.opts.listener,
            version: t.getProtocol() ?? 'unknown',
          });
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
    this.noteLogin('privacy_required', 0);
    this.opts.runner.count(PROTOCOL, 'privacy_required', 0);
    const r = imapReply('privacy_required');
    this.no(tag, r.text, r.code);
  }

  private noteLogin(result: LoginResult, ms: number): void {
    this.loginResult = result;
    this.loginMs = ms;
  }

  /**
   * Too many wrong passwords on one connection: a guesser gets `BYE`, whatever the limiter says.
   * Outages (token endpoint, upstream) are not the client's fault and do not count.
   */
  private countFailedLogin(reason: LoginResult): void {
    if (reason !== 'bad_credentials' && reason !== 'limited') return;
    this.failedLogins++;
    if (this.failedLogins >= this.opts.limits.failedLogins)
      this.reject('too_many_failed_logins', 'Too many failed logins on this connection');
  }

  async login(tag: string, mechanism: LoginMechanism, login: string, password: string): Promise<void> {
    if (!this.loginAllowed()) return this.refusePrivacy(tag);
    this.setState('login');
    clearTimeout(this.idleTimer);
    const abort = new AbortController();
    this.loginAbort = abort;
    const info: ClientInfo = {
      cid: this.peer.cid,
      address: this.peer.address,
      port: this.peer.port,
      listener: this.opts.listener,
      secure: this.secure,
      log: this.log,
    };
    const verdict = await this.opts.runner.run(
      { protocol: PROTOCOL, login, password, mechanism, client: info },
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
      this.no(tag, imapReplyText(verdict.reason, verdict.clientText), imapReply(verdict.reason).code);
      this.setState('ready');
      this.armIdle();
      this.countFailedLogin(verdict.reason);
      return;
    }
    this.log.info({ mechanism }, 'login ok');
    const caps = verdict.capabilities;
    const code = caps.length > 0 ? `CAPABILITY ${caps.join(' ')}` : undefined;
    this.setState('spliced');
    this.phase = 'spliced';
    this.sessionGauge('preauth').dec();
    this.sessionGauge('spliced').inc();
    const client = this.socket;
    this.detach(client);
    if ('setKeepAlive' in client) (client as Socket).setKeepAlive(true, 60_000);
    verdict.accept(w.tagged(tag, 'OK', 'Logged in', code), this.splitter.takePending()).then(
      (stats) => this.finish('spliced_end', stats),
      (err: unknown) => {
        this.log.error({ err }, 'splice failed');
        this.finish('splice_error');
      },
    );
  }

  private sessionGauge(phase: 'preauth' | 'spliced') {
    return this.opts.metrics.activeSessions.labels({
      protocol: PROTOCOL,
      listener: this.opts.listener,
      phase,
    });
  }

  // --- ending ------------------------------------------------------------------------------

  private reject(reason: RejectReason, byeText?: string): void {
    if (this.state === 'closed') return;
    this.opts.metrics.preauthRejections.inc({ protocol: PROTOCOL, reason });
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
    this.sessionGauge(this.phase).dec();
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
