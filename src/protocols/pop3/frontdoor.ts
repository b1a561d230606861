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
import { keepsPromises } from './capabilities.js';
import { err, multiline, ok, pop3FailureLine, pop3Reply } from './replies.js';

export interface Pop3Limits extends SessionLimits {
  /** Longest command line before login (AUTH responses carry the password). */
  readonly lineBytes: number;
}

export interface Pop3SessionOptions extends PreauthOptions {
  readonly limits: Pop3Limits;
  /** The safe capabilities every upstream behind this listener shares. */
  readonly capabilities: () => readonly string[];
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (line: Buffer) => void | Promise<void>;

const SASL_CANCEL = '*';

const CLOSE_TEXTS: Partial<Record<RejectReason, string>> = {
  too_many_from_address: 'Too many connections from your address; try again later',
  too_many_unauthenticated: 'Too many connections; try again later',
  preauth_lifetime: 'Took too long to log in',
  shutdown: 'Server shutting down, try again later',
  idle_timeout: 'Autologout; idle too long',
  too_many_commands: 'Too many commands before login',
  too_many_bad_commands: 'Too many invalid commands',
  too_many_failed_logins: 'Too many failed logins on this connection',
  starttls_injection: 'Data after STLS refused',
  line_too_long: 'Line too long',
};

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * USER and PASS carry UTF-8 names and passwords, as AUTH PLAIN does (PASS keeps its spaces:
 * passwords may have them); other arguments are trimmed. Null when USER/PASS are not UTF-8.
 */
function argumentText(verb: string, raw: Buffer): string | null {
  if (verb !== 'USER' && verb !== 'PASS') return raw.toString('latin1').trim();
  try {
    const text = utf8.decode(raw);
    return verb === 'PASS' ? text : text.trim();
  } catch {
    return null;
  }
}

/** Closing reasons that are about load or time, not the client's words: RFC 3206 SYS/TEMP. */
const TEMPORARY: ReadonlySet<RejectReason> = new Set([
  'shutdown',
  'idle_timeout',
  'too_many_from_address',
  'too_many_unauthenticated',
  'preauth_lifetime',
]);

/** Commands known before login; anything else is refused and counted as bad (RFC 1939 §4). */
type Handler = (s: Pop3Session, args: string) => void | Promise<void>;
const COMMANDS: ReadonlyMap<string, Handler> = new Map<string, Handler>([
  ['CAPA', (s) => s.capa()],
  ['STLS', (s, a) => s.stls(a)],
  ['USER', (s, a) => s.user(a)],
  ['PASS', (s, a) => s.pass(a)],
  ['AUTH', (s, a) => s.auth(a)],
  [
    'APOP',
    // APOP proves knowledge of a secret shared with the server; the proxy holds only password hashes.
    (s) => s.bad('APOP is not supported here: log in with USER/PASS or AUTH and the app password'),
  ],
  ['QUIT', (s) => s.quit()],
]);

/**
 * One POP3 connection before login: greeting, CAPA, STLS, USER/PASS, AUTH PLAIN/LOGIN, on the
 * shared session plumbing. After `+OK` the bytes are spliced: the transaction state (STAT,
 * RETR, DELE …) is the upstream's.
 */
export class Pop3Session extends PreauthBase {
  protected readonly protocol = 'pop3';
  protected readonly closeTexts = CLOSE_TEXTS;
  private sasl: SaslNext | undefined;
  /** The user name from USER, waiting for PASS. */
  private pendingUser: string | undefined;
  /** The capabilities this client was promised by its last CAPA. */
  private promised: readonly string[] = [];

  constructor(
    socket: Duplex,
    peer: Peer,
    private readonly opts: Pop3SessionOptions,
    log: Logger,
  ) {
    super(socket, peer, opts, log);
  }

  protected newFraming(): LineSplitter {
    return new LineSplitter(this.opts.limits.lineBytes, {
      line: (l) => this.runCommand(() => this.dispatch(l)),
      tooLong: () => this.reject('line_too_long'),
    });
  }

  protected greeting(): string {
    return ok('imap-oauth-proxy POP3 ready');
  }

  protected goodbye(reason: RejectReason, text: string): string {
    return err(TEMPORARY.has(reason) ? 'SYS/TEMP' : undefined, text);
  }

  /** RFC 2595 §4: what was said before TLS is forgotten. */
  protected override onSecure(): void {
    this.pendingUser = undefined;
    this.promised = [];
  }

  private async dispatch(l: Buffer): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'sasl' && this.sasl) {
      const next = this.sasl;
      this.sasl = undefined;
      this.setState('ready');
      if (l.toString('latin1') === SASL_CANCEL) return this.bad('Authentication cancelled');
      return next(l);
    }
    if (isHttpRequestLine(l)) return this.reject('http_request');
    const text = l.toString('latin1');
    const sp = text.indexOf(' ');
    const verb = (sp === -1 ? text : text.slice(0, sp)).toUpperCase();
    const handler = COMMANDS.get(verb);
    if (!handler) return this.bad('Unknown command or not allowed before login');
    const args = sp === -1 ? '' : argumentText(verb, l.subarray(sp + 1));
    if (args === null) return this.bad('USER and PASS take UTF-8 text');
    await handler(this, args);
  }

  bad(text: string): void {
    this.write(err(undefined, text));
    this.countBad();
  }

  // --- commands ----------------------------------------------------------------------------

  capa(): void {
    const caps: string[] = [];
    if (this.opts.tlsMode === 'starttls' && !this.secure) caps.push('STLS');
    if (this.loginAllowed()) caps.push('USER', 'SASL PLAIN LOGIN');
    const shared = this.opts.capabilities();
    this.promised = shared;
    caps.push('RESP-CODES', 'AUTH-RESP-CODE', ...shared);
    this.write(multiline('Capability list follows', caps));
  }

  async stls(args: string): Promise<void> {
    if (args !== '') return this.bad('STLS takes no arguments');
    if (this.opts.tlsMode !== 'starttls' || !this.opts.secureContext)
      return this.bad('STLS not offered here');
    if (this.secure) return this.bad('TLS already active');
    await this.upgrade(ok('Begin TLS negotiation now'));
  }

  user(name: string): void {
    if (name === '' || name.length > 255) this.bad('Syntax: USER name');
    else if (!this.loginAllowed()) this.refusePrivacy();
    else {
      this.pendingUser = name;
      this.write(ok('Send PASS'));
    }
  }

  async pass(password: string): Promise<void> {
    const user = this.pendingUser;
    this.pendingUser = undefined;
    if (user === undefined) return this.bad('USER first');
    if (!this.loginAllowed()) return this.refusePrivacy();
    await this.login('USER/PASS', user, password);
  }

  quit(): void {
    this.write(ok('Bye'));
    this.close('logout');
  }

  async auth(args: string): Promise<void> {
    const [mech = '', initial, extra] = args === '' ? [] : args.split(' ');
    if (mech === '') {
      // RFC 1734 style listing, which some clients still ask for.
      this.write(multiline('Mechanisms follow', this.loginAllowed() ? ['PLAIN', 'LOGIN'] : []));
      return;
    }
    if (extra !== undefined) return this.bad('Syntax: AUTH mechanism [initial-response]');
    const mechanism = mech.toUpperCase();
    if (mechanism !== 'PLAIN' && mechanism !== 'LOGIN')
      return this.bad('Unsupported authentication mechanism');
    if (!this.loginAllowed()) return this.refusePrivacy();
    if (mechanism === 'PLAIN') {
      const plain: SaslNext = (l) => {
        const msg = decodeBase64(l);
        if (msg === null) return this.bad('Invalid base64');
        const p = parsePlain(msg);
        if (!p.ok && p.why === 'malformed') return this.bad('Malformed PLAIN response');
        if (!p.ok)
          return void this.write(err('AUTH', 'Authorization identity must be empty or the login name'));
        return this.login('AUTH PLAIN', p.authcid, p.password);
      };
      if (initial !== undefined) return plain(Buffer.from(initial === '=' ? '' : initial, 'latin1'));
      return this.expectSasl('', plain);
    }
    const password =
      (user: string): SaslNext =>
      (l) => {
        const pass = decodeLoginResponse(l);
        if (pass === null) return this.bad('Invalid base64');
        return this.login('AUTH LOGIN', user, pass);
      };
    const username: SaslNext = (l) => {
      const user = decodeLoginResponse(l);
      if (user === null) return this.bad('Invalid base64');
      if (user.length === 0) return this.bad('Empty user name');
      return this.expectSasl(LOGIN_PASSWORD_CHALLENGE, password(user));
    };
    if (initial !== undefined && initial !== '=') return username(Buffer.from(initial, 'latin1'));
    return this.expectSasl(LOGIN_USERNAME_CHALLENGE, username);
  }

  private expectSasl(challenge: string, next: SaslNext): void {
    this.sasl = next;
    this.setState('sasl');
    this.write(`+ ${challenge}\r\n`);
  }

  private refusePrivacy(): void {
    this.countPrivacyRefusal();
    const r = pop3Reply('privacy_required');
    this.write(err(r.code, r.text));
  }

  private async login(mechanism: LoginMechanism, login: string, password: string): Promise<void> {
    const promised = this.promised;
    await this.runLogin(
      mechanism,
      login,
      password,
      {
        failure: (reason, clientText) => pop3FailureLine(reason, clientText),
        success: () => ok('Logged in'),
      },
      promised.length > 0
        ? { upstreamKeeps: (caps: readonly string[]) => keepsPromises(promised, caps) }
        : {},
    );
  }
}
