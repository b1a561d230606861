import type { Duplex } from 'node:stream';
import type { LoginMechanism } from '../../core/types.js';
import type { Logger } from '../../log.js';
import type { RejectReason } from '../../net/limits.js';
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
import { COMMANDS, type CommandContext } from './commands.js';
import { type RawCommand, type SplitError, Splitter } from './framing.js';
import type { WireLimits } from './limits.js';
import { imapReply, imapReplyText } from './replies.js';
import { ParseError, tokenize } from './tokenizer.js';
import * as w from './writer.js';

export interface SessionOptions extends PreauthOptions {
  readonly limits: WireLimits;
}

/** SASL "next handler" slot: receives the client's next response line. */
type SaslNext = (tag: string, line: Buffer) => void | Promise<void>;

const SASL_CANCEL = Buffer.from('*');

const CLOSE_TEXTS: Partial<Record<RejectReason, string>> = {
  too_many_from_address: 'Too many connections from your address; try again later',
  too_many_unauthenticated: 'Too many connections; try again later',
  preauth_lifetime: 'Took too long to log in',
  shutdown: 'Server shutting down',
  idle_timeout: 'Autologout; idle too long',
  too_many_commands: 'Too many commands before login',
  too_many_bad_commands: 'Too many invalid commands',
  too_many_failed_logins: 'Too many failed logins on this connection',
  starttls_injection: 'Data after STARTTLS refused',
};

const SPLIT_TEXT: Record<SplitError, string> = {
  line_too_long: 'Command line too long',
  literal_too_long: 'Literal too large',
  too_many_literals: 'Too many literals in one command',
  message_too_long: 'Command too long',
};

/**
 * One IMAP client connection before login: the pre-auth state machine on the shared session
 * plumbing. Commands are answered one at a time, in order; bytes pipelined behind LOGIN or
 * STARTTLS stay unread until the session decides their fate.
 */
export class ImapPreauthSession extends PreauthBase implements CommandContext {
  protected readonly protocol = 'imap';
  protected readonly closeTexts = CLOSE_TEXTS;
  private sasl: { tag: string; next: SaslNext } | undefined;

  constructor(
    socket: Duplex,
    peer: Peer,
    private readonly opts: SessionOptions,
    log: Logger,
  ) {
    super(socket, peer, opts, log);
  }

  // --- framing -----------------------------------------------------------------------------

  protected newFraming(): Splitter {
    return new Splitter(this.opts.limits, {
      command: (cmd) => this.runCommand(() => this.dispatch(cmd)),
      continuation: () => this.write(w.continuation('Ready for literal data')),
      error: (reason) => this.reject(reason, SPLIT_TEXT[reason]),
    });
  }

  protected greeting(): string {
    return w.untaggedStatus('OK', 'imap-oauth-proxy ready', this.capabilityLine());
  }

  protected goodbye(_reason: RejectReason, text: string): string {
    return w.untaggedStatus('BYE', text);
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
    this.countBad();
  }

  untagged(text: string): void {
    this.write(w.untagged(text));
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
    await this.upgrade(w.tagged(tag, 'OK', 'Begin TLS negotiation now'));
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
    this.countPrivacyRefusal();
    const r = imapReply('privacy_required');
    this.no(tag, r.text, r.code);
  }

  async login(tag: string, mechanism: LoginMechanism, login: string, password: string): Promise<void> {
    if (!this.loginAllowed()) return this.refusePrivacy(tag);
    await this.runLogin(mechanism, login, password, {
      failure: (reason, clientText) =>
        w.tagged(tag, 'NO', imapReplyText(reason, clientText), imapReply(reason).code),
      success: (caps) =>
        w.tagged(tag, 'OK', 'Logged in', caps.length > 0 ? `CAPABILITY ${caps.join(' ')}` : undefined),
    });
  }
}
