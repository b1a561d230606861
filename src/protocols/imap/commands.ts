import type { SessionState } from './state.js';
import { ParseError, type Token, tokenText } from './tokenizer.js';

/** What a pre-auth command may do to its session. */
export interface CommandContext {
  ok(tag: string, text: string, code?: string): void;
  no(tag: string, text: string, code?: string): void;
  bad(tag: string, text: string): void;
  untagged(text: string): void;
  capabilityLine(): string;
  logout(tag: string): void;
  startTls(tag: string): Promise<void>;
  authenticate(tag: string, mechanism: string, initial: string | null): Promise<void>;
  login(tag: string, mechanism: 'LOGIN', login: string, password: string): Promise<void>;
}

export interface CommandSpec {
  readonly states: ReadonlySet<SessionState>;
  /** Validates and converts arguments; throws ParseError (→ BAD). */
  run(ctx: CommandContext, tag: string, args: readonly Token[]): void | Promise<void>;
}

function command<P>(spec: {
  states: readonly SessionState[];
  parse: (args: readonly Token[], tag: string) => P;
  handle: (ctx: CommandContext, tag: string, parsed: P) => void | Promise<void>;
}): CommandSpec {
  return {
    states: new Set(spec.states),
    run: (ctx, tag, args) => spec.handle(ctx, tag, spec.parse(args, tag)),
  };
}

function noArgs(args: readonly Token[], tag: string): null {
  if (args.length > 0) throw new ParseError('Unexpected arguments', tag);
  return null;
}

function astring(t: Token | undefined, tag: string, what: string): string {
  const s = tokenText(t);
  if (s === null) throw new ParseError(`Invalid ${what}`, tag);
  return s;
}

/** ID takes NIL or a list of string/NIL pairs (RFC 2971). */
function parseId(args: readonly Token[], tag: string): null {
  const [arg] = args;
  if (args.length !== 1 || !arg) throw new ParseError('ID expects one argument', tag);
  if (arg.kind === 'nil') return null;
  if (arg.kind !== 'list' || arg.items.length % 2 !== 0 || arg.items.length > 60) {
    throw new ParseError('Malformed ID parameter list', tag);
  }
  for (const item of arg.items) {
    if (item.kind !== 'string' && item.kind !== 'nil' && item.kind !== 'atom') {
      throw new ParseError('Malformed ID parameter list', tag);
    }
  }
  return null;
}

const READY: readonly SessionState[] = ['ready'];

/** Every command the front door understands before authentication. */
export const COMMANDS: ReadonlyMap<string, CommandSpec> = new Map<string, CommandSpec>([
  [
    'CAPABILITY',
    command({
      states: READY,
      parse: noArgs,
      handle: (ctx, tag) => {
        ctx.untagged(ctx.capabilityLine());
        ctx.ok(tag, 'CAPABILITY completed');
      },
    }),
  ],
  ['NOOP', command({ states: READY, parse: noArgs, handle: (ctx, tag) => ctx.ok(tag, 'NOOP completed') })],
  ['LOGOUT', command({ states: READY, parse: noArgs, handle: (ctx, tag) => ctx.logout(tag) })],
  [
    'ID',
    command({
      states: READY,
      parse: parseId,
      handle: (ctx, tag) => {
        ctx.untagged('ID ("name" "imap-oauth-proxy")');
        ctx.ok(tag, 'ID completed');
      },
    }),
  ],
  ['STARTTLS', command({ states: READY, parse: noArgs, handle: (ctx, tag) => ctx.startTls(tag) })],
  [
    'LOGIN',
    command({
      states: READY,
      parse: (args, tag) => {
        if (args.length !== 2) throw new ParseError('LOGIN expects a user name and a password', tag);
        return { login: astring(args[0], tag, 'user name'), password: astring(args[1], tag, 'password') };
      },
      handle: (ctx, tag, p) => ctx.login(tag, 'LOGIN', p.login, p.password),
    }),
  ],
  [
    'AUTHENTICATE',
    command({
      states: READY,
      parse: (args, tag) => {
        const [mech, ir] = args;
        if (args.length < 1 || args.length > 2 || mech?.kind !== 'atom') {
          throw new ParseError('AUTHENTICATE expects a mechanism and an optional initial response', tag);
        }
        if (ir !== undefined && ir.kind !== 'atom') throw new ParseError('Invalid initial response', tag);
        return { mechanism: mech.value.toUpperCase(), initial: ir?.kind === 'atom' ? ir.value : null };
      },
      handle: (ctx, tag, p) => ctx.authenticate(tag, p.mechanism, p.initial),
    }),
  ],
]);
