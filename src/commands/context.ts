import { type ParseArgsConfig, parseArgs } from 'node:util';
import type { Config } from '../config/schema.js';
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { Keyring } from '../store/crypto.js';
import type { AccountRecord, GrantStore } from '../store/types.js';

/** What every admin command gets from the CLI entry point. */
export interface CommandContext {
  config: Config;
  store: GrantStore;
  keyring: Keyring;
  out: (s: string) => void;
  err: (s: string) => void;
  stdin: NodeJS.ReadableStream;
  log: Logger;
}

export const EXIT_OK = 0;
export const EXIT_RUNTIME = 1;
export const EXIT_USAGE = 2;

/** Wrong arguments: message plus the command's usage, exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Default for a required positional (`[login = missing('login')]`): runLeaf counted them, this narrows the type. */
export function missing(name: string): never {
  throw new UsageError(`missing argument <${name}>`);
}

type Options = NonNullable<ParseArgsConfig['options']>;
type Values = Record<string, string | boolean | undefined>;

export interface Leaf {
  /** e.g. 'account add <login> --provider P [--upstream-user EMAIL]' */
  usage: string;
  summary: string;
  options?: Options;
  /** Inclusive bounds on positional arguments. */
  positionals: [number, number];
  run(values: Values, positionals: string[], ctx: CommandContext): Promise<number>;
}

export interface Group {
  summary: string;
  sub: Record<string, Leaf | Group>;
}

const isGroup = (c: Leaf | Group): c is Group => 'sub' in c;
const isHelp = (a: string | undefined) => a === '--help' || a === '-h' || a === 'help';

function groupHelp(path: string, g: Group): string {
  const width = Math.max(...Object.keys(g.sub).map((k) => k.length));
  const lines = Object.entries(g.sub).map(([k, c]) => `  ${k.padEnd(width)}  ${c.summary}`);
  return `Usage: imap-oauth-proxy ${path} <command> [options]\n\n${g.summary}\n\nCommands:\n${lines.join('\n')}\n\nRun "imap-oauth-proxy ${path} <command> --help" for details.`;
}

function leafHelp(l: Leaf): string {
  const opts = Object.entries(l.options ?? {}).map(
    ([k, o]) => `  --${k}${o.type === 'string' ? ' <value>' : ''}${o.short ? `, -${o.short}` : ''}`,
  );
  return `Usage: imap-oauth-proxy ${l.usage}\n\n${l.summary}${opts.length ? `\n\nOptions:\n${opts.join('\n')}` : ''}`;
}

async function runLeaf(l: Leaf, args: string[], ctx: CommandContext): Promise<number> {
  if (args.some(isHelp)) {
    ctx.out(leafHelp(l));
    return EXIT_OK;
  }
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args, options: l.options ?? {}, allowPositionals: true, strict: true }) as {
      values: Values;
      positionals: string[];
    };
    const [min, max] = l.positionals;
    if (parsed.positionals.length < min) throw new UsageError('missing argument');
    if (parsed.positionals.length > max)
      throw new UsageError(`unexpected argument "${parsed.positionals[max]}"`);
  } catch (e) {
    ctx.err(`error: ${messageOf(e)}\nUsage: imap-oauth-proxy ${l.usage}`);
    return EXIT_USAGE;
  }
  try {
    return await l.run(parsed.values, parsed.positionals, ctx);
  } catch (e) {
    if (e instanceof UsageError) {
      ctx.err(`error: ${e.message}\nUsage: imap-oauth-proxy ${l.usage}`);
      return EXIT_USAGE;
    }
    // Store and config errors carry admin-facing text and never a secret.
    ctx.err(`error: ${messageOf(e)}`);
    ctx.log.debug({ err: e }, 'command failed');
    return EXIT_RUNTIME;
  }
}

/** Dispatches `args` through a command tree; prints help for groups and leaves. */
export async function dispatch(path: string, g: Group, args: string[], ctx: CommandContext): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || isHelp(name)) {
    (name === undefined ? ctx.err : ctx.out)(groupHelp(path, g));
    return name === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const c = g.sub[name];
  if (!c) {
    ctx.err(`error: unknown command "${path} ${name}"\n\n${groupHelp(path, g)}`);
    return EXIT_USAGE;
  }
  return isGroup(c) ? dispatch(`${path} ${name}`, c, rest, ctx) : runLeaf(c, rest, ctx);
}

/** Looks up an account by any login, or fails with a clear message (exit 1). */
export async function requireAccount(ctx: CommandContext, login: string): Promise<AccountRecord> {
  const a = await ctx.store.getAccountByLogin(login);
  if (!a) throw new Error(`no account with login "${login}"`);
  return a;
}

/** Plain aligned text table; the first row is the header. */
export function table(rows: string[][]): string {
  const [header = []] = rows;
  const widths = header.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function isoOrDash(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Reads all of stdin (secrets come this way, never from argv where `ps` shows them). */
export async function readAll(stdin: NodeJS.ReadableStream, maxBytes = 64 * 1024): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of stdin) {
    const b = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
    size += b.length;
    if (size > maxBytes) throw new Error(`input on stdin is larger than ${maxBytes} bytes`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}
