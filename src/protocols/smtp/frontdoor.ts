import type { Duplex } from 'node:stream';
import type { LoginMechanism } from '../../core/types.js';
import type { Logger } from '../../log.js';
import type { RejectReason, SessionLimits } from '../../net/limits.js';
import { LineSplitter } from '../../net/lines.js';
import type { Peer } from '../../net/listener.js';
import { isHttpRequestLine } from '../../net/policy.js';
import { PreauthBase, type PreauthOptions } from '../../net/preauth.js';
import {
  decodeBase64,
  decodeLoginResponse,
  LOGIN_PASSWORD_CHALLENGE,
  LOGIN_USERNAME_CHALLENGE,
  parsePlain,
} from '../../sasl/server.js';
import { COMMANDS, type SmtpCommandContext, splitCommand } from './commands.js';
import { keepsPromises } from './extensions.js';
import { line, lines, smtpFailureLine, smtpReply } from './replies.js';

export interface SmtpLimits extends SessionLimits {
  /** Longest command line before AUTH (an AUTH PLAIN line carries the password). */
  readonly lineBytes: number;
}

export interface SmtpSessionOptions extends PreauthOptions {
  readonly limits: SmtpLimits;
  /** The name in the greeting and the EHLO reply. */
  readonly serverName: string;
  /** The safe extensions every upstream behind this listener shares, as EHLO lines. */
  readonly extensions: () => readonly string[];
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (line: Buffer) => void | Promise<void>;

const SASL_CANCEL = '*';

const CLOSE_TEXTS: Partial<Record<RejectReason, string>> = {
  too_many_from_address: 'Too many connections from your address; try again later',
  too_many_unauthenticated: 'Too many connections; try again later',
  preauth_lifetime: 'Took too long to log in',
  shutdown: 'Server shutting down, try again later',
  idle_timeout: 'Idle too long, closing connection',
  too_many_commands: 'Too many commands before authentication',
  too_many_bad_commands: 'Too many errors',
  too_many_failed_logins: 'Too many failed logins on this connection',
  starttls_injection: 'Data after STARTTLS refused',
  talk_before_greeting: 'Talking before the greeting is not allowed',
  line_too_long: 'Line too long',
};

/**
 * One SMTP submission connection before AUTH succeeds: greeting, EHLO/HELO, STARTTLS, AUTH
 * PLAIN/LOGIN, on the shared session plumbing. After `235` the bytes are spliced: MAIL, RCPT,
 * DATA and BDAT are never parsed here.
 */
export class SmtpSession extends PreauthBase implements SmtpCommandContext {
  protected readonly protocol = 'smtp';
  protected readonly closeTexts = CLOSE_TEXTS;
  private sasl: SaslNext | undefined;
  /** The extensions this client was promised by its last EHLO (none after HELO). */
  private promised: readonly string[] | undefined;

  constructor(
    socket: Duplex,
    peer: Peer,
    private readonly opts: SmtpSessionOptions,
    log: Logger,
  ) {
    super(socket, peer, opts, log);
  }

  // --- framing -----------------------------------------------------------------------------

  protected newFraming(): LineSplitter {
    return new LineSplitter(this.opts.limits.lineBytes, {
      line: (l) => this.runCommand(() => this.dispatch(l)),
      tooLong: () => this.reject('line_too_long'),
    });
  }

  protected greeting(): string {
    return `220 ${this.opts.serverName} ESMTP imap-oauth-proxy ready\r\n`;
  }

  protected goodbye(reason: RejectReason, text: string): string {
    return `421 ${reason === 'idle_timeout' ? '4.4.2' : '4.7.0'} ${this.opts.serverName} ${text}\r\n`;
  }

  /** RFC 3207 §4.2: forget everything learned before TLS; the client must EHLO again. */
  protected override onSecure(): void {
    this.promised = undefined;
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

  // --- replies -----------------------------------------------------------------------------

  reply(code: number, enhanced: string, text: string): void {
    this.write(line(code, enhanced, text));
  }

  bad(code: number, enhanced: string, text: string): void {
    this.reply(code, enhanced, text);
    this.countBad();
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
    await this.upgrade('220 2.0.0 Ready to start TLS\r\n');
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
      if (user === null) return this.bad(501, '5.5.2', 'Cannot decode base64');
      if (user.length === 0) return this.bad(501, '5.5.2', 'Empty user name');
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
    this.countPrivacyRefusal();
    const r = smtpReply('privacy_required');
    this.reply(r.code, r.enhanced, r.text);
  }

  private async login(mechanism: LoginMechanism, login: string, password: string): Promise<void> {
    const promised = this.promised;
    await this.runLogin(
      mechanism,
      login,
      password,
      {
        failure: (reason, clientText) => smtpFailureLine(reason, clientText),
        success: () => '235 2.7.0 Authentication successful\r\n',
      },
      promised && promised.length > 0
        ? { upstreamKeeps: (caps: readonly string[]) => keepsPromises(promised, caps) }
        : {},
    );
  }
}

/** EHLO/HELO argument: a domain or an address literal; devices send odd names, so only emptiness and spaces fail. */
function validDomain(d: string): boolean {
  return d.length > 0 && d.length <= 255 && !/\s/.test(d);
}
