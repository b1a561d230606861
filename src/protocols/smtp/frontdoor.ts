import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { SecureContext, TLSSocket } from 'node:tls';
import type { LoginRunner } from '../../core/login-runner.js';
import type { ClientInfo, LoginMechanism } from '../../core/types.js';
import type { LoginResult } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import { failStream, type RejectReason, type SessionLimits } from '../../net/limits.js';
import { LineSplitter } from '../../net/lines.js';
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
import { COMMANDS, type SmtpCommandContext, type SmtpState, splitCommand } from './commands.js';
import { keepsPromises } from './extensions.js';
import { line, lines, smtpFailureLine, smtpReply } from './replies.js';

export interface SmtpLimits extends SessionLimits {
  /** Longest command line before AUTH (an AUTH PLAIN line carries the password). */
  readonly lineBytes: number;
}

export interface SmtpSessionOptions {
  readonly listener: string;
  /** The name in the greeting and the EHLO reply. */
  readonly serverName: string;
  readonly tlsMode: 'none' | 'starttls' | 'implicit';
  readonly allowCleartextLogin: boolean;
  readonly secureContext: SecureContext | undefined;
  readonly runner: LoginRunner;
  readonly limits: SmtpLimits;
  readonly metrics: Metrics;
  /** The safe extensions every upstream behind this listener shares, as EHLO lines. */
  readonly extensions: () => readonly string[];
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (line: Buffer) => void | Promise<void>;

const PROTOCOL = 'smtp';
const SASL_CANCEL = '*';
/** Smallest first chunk that can be told apart as a PROXY header. */
const PROXY_SNIFF_BYTES = 6;

/**
 * One SMTP submission connection before AUTH succeeds: greeting, EHLO/HELO, STARTTLS, AUTH
 * PLAIN/LOGIN. Reading pauses while a command runs, so replies go out in order and bytes
 * pipelined behind STARTTLS or AUTH stay unread until the session decides their fate. After
 * `235` the bytes are spliced: MAIL, RCPT, DATA and BDAT are never parsed here.
 */
export class SmtpSession implements SmtpCommandContext, FrontDoorSession {
  private state: SmtpState = 'greeting';
  private socket: Duplex;
  private secure: boolean;
  private splitter: LineSplitter;
  private badCount = 0;
  private commandCount = 0;
  private failedLogins = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private greetTimer: NodeJS.Timeout | undefined;
  private sasl: SaslNext | undefined;
  /** The extensions this client was promised by its last EHLO (none after HELO). */
  private promised: readonly string[] | undefined;
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
  log: Logger;
  readonly done: Promise<void>;
  private resolveDone!: () => void;

  constructor(
    socket: Duplex,
    private readonly peer: Peer,
    private readonly opts: SmtpSessionOptions,
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

  get currentState(): SmtpState {
    return this.state;
  }

  start(): void {
    this.sessionGauge('preauth').inc();
    this.attach(this.socket);
    this.socket.resume();
    this.armIdle();
    if (this.opts.limits.greetingDelayMs > 0) {
      this.greetTimer = setTimeout(() => this.greet(), this.opts.limits.greetingDelayMs);
    } else {
      this.greet();
    }
  }

  /** Server shutdown: `421` before AUTH; spliced sessions are left alone. */
  shutdown(): void {
    if (this.phase === 'preauth' && this.state !== 'closed')
      this.reject('shutdown', 'Server shutting down, try again later');
  }

  // --- state -------------------------------------------------------------------------------

  private setState(next: SmtpState): void {
    if (this.state === next) return;
    this.log.trace({ from: this.state, to: next }, 'state');
    this.state = next;
  }

  private newSplitter(): LineSplitter {
    return new LineSplitter(this.opts.limits.lineBytes, {
      line: (l) => this.onLine(l),
      tooLong: () => this.reject('line_too_long', 'Line too long'),
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
    this.write(`220 ${this.opts.serverName} ESMTP imap-oauth-proxy ready\r\n`);
  }

  private armIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => this.reject('idle_timeout', 'Idle too long, closing connection', '4.4.2'),
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
      // A client that talks before the greeting is a spam bot or a misconfigured device.
      this.reject('talk_before_greeting', 'Talking before the greeting is not allowed');
      return;
    }
    this.splitter.push(chunk);
  }

  private onLine(l: Buffer): void {
    this.splitter.pause();
    if (++this.commandCount > this.opts.limits.preauthCommands && this.state !== 'sasl') {
      this.reject('too_many_commands', 'Too many commands before authentication');
      return;
    }
    this.socket.pause();
    this.armIdle();
    queueMicrotask(() => {
      this.dispatch(l).then(
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
    if (!this.splitter.isPaused && this.state !== ('closed' as SmtpState)) this.socket.resume();
  }

  private async dispatch(l: Buffer): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'sasl' && this.sasl) {
      const next = this.sasl;
      this.sasl = undefined;
      this.setState('ready');
      if (l.toString('latin1') === SASL_CANCEL) return this.bad(501, '5.5.2', 'Authentication cancelled');
      return next(l);
    }
    if (isHttpRequestLine(l)) return this.reject('http_request');
    const { verb, args } = splitCommand(l.toString('latin1'));
    const spec = COMMANDS.get(verb);
    if (!spec) return this.bad(500, '5.5.2', 'Command not recognized');
    await spec.run(this, args);
  }

  // --- writing -----------------------------------------------------------------------------

  private write(data: string): void {
    if (this.state !== 'closed' && this.socket.writable) this.socket.write(data);
  }

  reply(code: number, enhanced: string, text: string): void {
    this.write(line(code, enhanced, text));
  }

  bad(code: number, enhanced: string, text: string): void {
    this.reply(code, enhanced, text);
    this.badCount++;
    if (this.badCount >= this.opts.limits.badCommands)
      this.reject('too_many_bad_commands', 'Too many errors');
  }

  private loginAllowed(): boolean {
    return this.secure || this.opts.allowCleartextLogin;
  }

  // --- commands ----------------------------------------------------------------------------

  ehlo(domain: string): void {
    if (!validDomain(domain)) {
      this.bad(501, '5.5.4', 'Syntax: EHLO domain-or-address');
      return;
    }
    const ext = [...this.opts.extensions()];
    this.promised = ext;
    const lst = [`${this.opts.serverName} Hello ${domain.slice(0, 64)}`, ...ext];
    if (this.opts.tlsMode === 'starttls' && !this.secure) lst.push('STARTTLS');
    if (this.loginAllowed()) lst.push('AUTH PLAIN LOGIN');
    lst.push('HELP');
    this.write(lines(250, lst));
  }

  helo(domain: string): void {
    if (!validDomain(domain)) {
      this.bad(501, '5.5.4', 'Syntax: HELO domain-or-address');
      return;
    }
    // HELO promises no extensions; some devices still go on to AUTH after it.
    this.promised = [];
    this.write(`250 ${this.opts.serverName}\r\n`);
  }

  quit(): void {
    this.write(`221 2.0.0 ${this.opts.serverName} closing connection\r\n`);
    this.close('logout');
  }

  authRequired(): void {
    this.bad(530, '5.7.0', 'Authentication required');
  }

  async startTls(args: string): Promise<void> {
    if (args !== '') return this.bad(501, '5.5.4', 'Syntax: STARTTLS');
    if (this.opts.tlsMode !== 'starttls' || !this.opts.secureContext)
      return this.bad(502, '5.5.1', 'STARTTLS not offered here');
    if (this.secure) return this.bad(503, '5.5.1', 'TLS already active');
    // Anything sent behind STARTTLS would be read as if it came over TLS: refuse (RFC 3207 §4.2 injection).
    if (this.splitter.takePending().length > 0 || this.socket.readableLength > 0) {
      return this.reject('starttls_injection', 'Data after STARTTLS refused');
    }
    this.setState('starttls');
    const raw = this.socket;
    this.detach(raw);
    const tls = await upgradeToTls(
      raw,
      '220 2.0.0 Ready to start TLS\r\n',
      this.opts.secureContext,
      {
        secure: (t) => {
          if (this.state !== 'starttls') return;
          this.secure = true;
          // RFC 3207 §4.2: forget everything learned before TLS; the client must EHLO again.
          this.promised = undefined;
          this.splitter = this.newSplitter();
          this.attach(t);
          this.armIdle();
          this.setState('ready');
          this.countTls(t);
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

  private countTls(t: TLSSocket): void {
    this.opts.metrics.tlsConnections.inc({
      protocol: PROTOCOL,
      listener: this.opts.listener,
      version: t.getProtocol() ?? 'unknown',
    });
  }

  async auth(args: string): Promise<void> {
    const [mech = '', initial, extra] = args.split(' ');
    if (mech === '' || extra !== undefined)
      return this.bad(501, '5.5.4', 'Syntax: AUTH mechanism [initial-response]');
    const mechanism = mech.toUpperCase();
    if (mechanism !== 'PLAIN' && mechanism !== 'LOGIN')
      return this.bad(504, '5.5.4', 'Unrecognized authentication type');
    if (!this.loginAllowed()) return this.refusePrivacy();
    if (mechanism === 'PLAIN') {
      const plain: SaslNext = (l) => {
        const msg = decodeBase64(l);
        if (msg === null) return this.bad(501, '5.5.2', 'Cannot decode base64');
        const p = parsePlain(msg);
        if (!p.ok && p.why === 'malformed') return this.bad(501, '5.5.2', 'Malformed PLAIN response');
        if (!p.ok) return this.reply(535, '5.7.8', 'Authorization identity must be empty or the login name');
        return this.login('AUTH PLAIN', p.authcid, p.password);
      };
      if (initial !== undefined) return plain(Buffer.from(initial === '=' ? '' : initial, 'latin1'));
      return this.expectSasl('', plain);
    }
    const password =
      (user: string): SaslNext =>
      (l) => {
        const pass = decodeLoginResponse(l);
        if (pass === null) return this.bad(501, '5.5.2', 'Cannot decode base64');
        return this.login('AUTH LOGIN', user, pass);
      };
    const username: SaslNext = (l) => {
      const user = decodeLoginResponse(l);
      if (user === null || user.length === 0) return this.bad(501, '5.5.2', 'Cannot decode base64');
      return this.expectSasl(LOGIN_PASSWORD_CHALLENGE, password(user));
    };
    if (initial !== undefined && initial !== '=') return username(Buffer.from(initial, 'latin1'));
    return this.expectSasl(LOGIN_USERNAME_CHALLENGE, username);
  }

  private expectSasl(challenge: string, next: SaslNext): void {
    this.sasl = next;
    this.setState('sasl');
    this.write(`334 ${challenge}\r\n`);
  }

  private refusePrivacy(): void {
    this.noteLogin('privacy_required', 0);
    this.opts.runner.count(PROTOCOL, 'privacy_required', 0);
    const r = smtpReply('privacy_required');
    this.reply(r.code, r.enhanced, r.text);
  }

  private noteLogin(result: LoginResult, ms: number): void {
    this.loginResult = result;
    this.loginMs = ms;
  }

  /** Too many wrong passwords on one connection: a guesser is closed, whatever the limiter says. */
  private countFailedLogin(reason: LoginResult): void {
    if (reason !== 'bad_credentials' && reason !== 'limited') return;
    this.failedLogins++;
    if (this.failedLogins >= this.opts.limits.failedLogins)
      this.reject('too_many_failed_logins', 'Too many failed logins on this connection');
  }

  private async login(mechanism: LoginMechanism, login: string, password: string): Promise<void> {
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
    const promised = this.promised;
    const verdict = await this.opts.runner.run(
      {
        protocol: PROTOCOL,
        login,
        password,
        mechanism,
        client: info,
        ...(promised && promised.length > 0
          ? { upstreamKeeps: (caps: readonly string[]) => keepsPromises(promised, caps) }
          : {}),
      },
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
      this.write(smtpFailureLine(verdict.reason, verdict.clientText));
      this.setState('ready');
      this.armIdle();
      this.countFailedLogin(verdict.reason);
      return;
    }
    this.log.info({ mechanism }, 'login ok');
    this.setState('spliced');
    this.phase = 'spliced';
    this.sessionGauge('preauth').dec();
    this.sessionGauge('spliced').inc();
    const client = this.socket;
    this.detach(client);
    if ('setKeepAlive' in client) (client as Socket).setKeepAlive(true, 60_000);
    verdict.accept('235 2.7.0 Authentication successful\r\n', this.splitter.takePending()).then(
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

  private reject(reason: RejectReason, text?: string, enhanced = '4.7.0'): void {
    if (this.state === 'closed') return;
    this.opts.metrics.preauthRejections.inc({ protocol: PROTOCOL, reason });
    this.log.info({ reason }, 'connection refused before login');
    this.close(
      reason,
      text === undefined ? undefined : `421 ${enhanced} ${this.opts.serverName} ${text}\r\n`,
    );
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

/** EHLO/HELO argument: a domain or an address literal; devices send odd names, so only emptiness and spaces fail. */
function validDomain(d: string): boolean {
  return d.length > 0 && d.length <= 255 && !/\s/.test(d);
}
