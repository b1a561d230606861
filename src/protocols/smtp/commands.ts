/**
 * SMTP commands before authentication, as data: which states accept each and what runs.
 * Everything else is unknown (counted toward the bad-command cap).
 */

/** What a command handler may do to its session. */
export interface SmtpCommandContext {
  /** Writes one reply line `code enhanced text`. */
  reply(code: number, enhanced: string, text: string): void;
  /** A syntax or sequence error: replied and counted toward the bad-command cap. */
  bad(code: number, enhanced: string, text: string): void;
  ehlo(domain: string): void;
  helo(domain: string): void;
  startTls(args: string): Promise<void>;
  auth(args: string): Promise<void>;
  quit(): void;
  /** A mail transaction command before AUTH. */
  authRequired(): void;
}

export interface SmtpCommand {
  readonly run: (ctx: SmtpCommandContext, args: string) => void | Promise<void>;
}

/** Known commands the proxy never runs itself before AUTH (RFC 5321 §4.5.1 lists VRFY/EXPN as optional). */
const NOT_OFFERED = (ctx: SmtpCommandContext) => ctx.bad(502, '5.5.1', 'Command not implemented');

export const COMMANDS: ReadonlyMap<string, SmtpCommand> = new Map<string, SmtpCommand>([
  ['EHLO', { run: (ctx, args) => ctx.ehlo(args) }],
  ['HELO', { run: (ctx, args) => ctx.helo(args) }],
  ['STARTTLS', { run: (ctx, args) => ctx.startTls(args) }],
  ['AUTH', { run: (ctx, args) => ctx.auth(args) }],
  ['MAIL', { run: (ctx) => ctx.authRequired() }],
  ['RCPT', { run: (ctx) => ctx.authRequired() }],
  ['DATA', { run: (ctx) => ctx.authRequired() }],
  ['BDAT', { run: (ctx) => ctx.authRequired() }],
  ['RSET', { run: (ctx) => ctx.reply(250, '2.0.0', 'OK') }],
  ['NOOP', { run: (ctx) => ctx.reply(250, '2.0.0', 'OK') }],
  [
    'HELP',
    {
      run: (ctx) =>
        ctx.reply(214, '2.0.0', 'Commands: EHLO HELO STARTTLS AUTH RSET NOOP QUIT HELP; AUTH before MAIL'),
    },
  ],
  ['QUIT', { run: (ctx) => ctx.quit() }],
  ['VRFY', { run: NOT_OFFERED }],
  ['EXPN', { run: NOT_OFFERED }],
  ['ETRN', { run: NOT_OFFERED }],
  ['TURN', { run: NOT_OFFERED }],
]);

/** `AUTH PLAIN abc` → ['AUTH', 'PLAIN abc']; the verb is case-insensitive (RFC 5321 §2.4). */
export function splitCommand(line: string): { verb: string; args: string } {
  const sp = line.indexOf(' ');
  const verb = (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
  return { verb, args: sp === -1 ? '' : line.slice(sp + 1).trim() };
}
