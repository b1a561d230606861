#!/usr/bin/env node
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configJsonSchemaText } from './config/json-schema.js';
import { loadConfig } from './config/load.js';
import { ConfigError } from './errors.js';

const USAGE = `imap-oauth-proxy — lets password-only IMAP clients reach OAuth2-only mailboxes

Usage: imap-oauth-proxy [--config FILE] <command> [options]   (--config may also follow the command)

Commands:
  serve                 run the proxy (listeners, admin HTTP); SIGHUP reloads it
  reload                tell the running proxy to re-read its config and certificates
  check-config          validate the config file; exit 0, or 1 listing every problem
  config-schema         print the config JSON Schema (for editors); --markdown: the reference table
  account …             manage accounts and app passwords   (account --help)
  grant …               manage OAuth grants                  (grant --help)
  key …                 generate and rotate encryption keys  (key --help)
  version               print the version

The config file is --config FILE, else $IMAP_PROXY_CONFIG, else ./config/example.yaml.
`;

export function version(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  for (const p of [join(here, '..', 'package.json'), join(here, '..', '..', 'package.json')]) {
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version;
  }
  return '0.0.0';
}

/** Removes `--config FILE` / `--config=FILE` from args wherever it stands and returns the file. */
export function takeConfigFlag(args: string[]): { file: string; rest: string[] } {
  const rest: string[] = [];
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--config' || a === '-c') {
      const v = args[i + 1];
      if (v === undefined || v.startsWith('-')) throw new UsageError('--config needs a file name');
      file = v;
      i++;
    } else if (a.startsWith('--config=')) {
      file = a.slice('--config='.length);
      if (file === '') throw new UsageError('--config needs a file name');
    } else rest.push(a);
  }
  return { file: file ?? process.env.IMAP_PROXY_CONFIG ?? 'config/example.yaml', rest };
}

const COMMANDS = new Set([
  'serve',
  'reload',
  'check-config',
  'config-schema',
  'account',
  'grant',
  'key',
  'version',
  'help',
]);

/** Finds the command when `--config FILE` comes first (as the usage line allows); the flag moves behind it. */
export function splitCommand(argv: string[]): { command: string | undefined; args: string[] } {
  const lead: string[] = [];
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--config' || a === '-c') {
      const v = argv[i + 1];
      if (v === undefined || v.startsWith('-') || COMMANDS.has(v))
        throw new UsageError(`${a} needs a file name before the command, e.g. ${a} my.yaml serve`);
      lead.push(a, v);
      i++;
    } else if (a.startsWith('--config=')) lead.push(a);
    else break;
  }
  return { command: argv[i], args: [...lead, ...argv.slice(i + 1)] };
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export async function main(argv: string[]): Promise<number> {
  const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
  const err = (s: string) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`);
  try {
    const { command, args } = splitCommand(argv);
    switch (command) {
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        out(USAGE);
        return command === undefined ? 2 : 0;
      case 'version':
      case '--version':
        out(version());
        return 0;
      case 'config-schema':
        if (args.includes('--markdown')) {
          const { configReferenceMarkdown } = await import('./config/reference.js');
          process.stdout.write(configReferenceMarkdown());
        } else process.stdout.write(configJsonSchemaText());
        return 0;
      case 'check-config': {
        const { file, rest } = takeConfigFlag(args);
        if (rest.includes('--help')) {
          out(
            'Usage: imap-oauth-proxy check-config [--config FILE]\nValidates the file; exit 0 when valid, 1 with every problem listed.',
          );
          return 0;
        }
        if (rest.length > 0) throw new UsageError(`check-config: unexpected argument ${rest[0]}`);
        const { config } = loadConfig(file);
        out(
          `${file}: OK (${config.listeners.length} listener(s), ${Object.keys(config.providers).length} provider(s))`,
        );
        const { configNotes } = await import('./config/notes.js');
        for (const note of configNotes(config)) out(`note: ${note}`);
        return 0;
      }
      case 'serve': {
        const { file, rest } = takeConfigFlag(args);
        if (rest.includes('--help')) {
          out('Usage: imap-oauth-proxy serve [--config FILE]\nRuns the proxy until SIGTERM or SIGINT.');
          return 0;
        }
        if (rest.length > 0) throw new UsageError(`serve: unexpected argument ${rest[0]}`);
        const { runServe } = await import('./commands/serve.js');
        return await runServe(file);
      }
      case 'reload': {
        const { file, rest } = takeConfigFlag(args);
        if (rest.includes('--help')) {
          out(
            'Usage: imap-oauth-proxy reload [--config FILE]\nAsks the running proxy (POST /reload on its admin port, needs admin.admin_password)\nto re-read the config and certificates without dropping sessions; SIGHUP does the same.',
          );
          return 0;
        }
        if (rest.length > 0) throw new UsageError(`reload: unexpected argument ${rest[0]}`);
        const { runReload } = await import('./commands/reload.js');
        return await runReload(file, { out, err });
      }
      case 'account':
      case 'grant':
      case 'key': {
        const { file, rest } = takeConfigFlag(args);
        const { runAdminCommand } = await import('./commands/dispatch.js');
        return await runAdminCommand(command, rest, file, { out, err });
      }
      default:
        err(`unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    if (e instanceof UsageError) {
      err(e.message);
      return 2;
    }
    if (e instanceof ConfigError) {
      err(`configuration error:\n${e.message}`);
      return 1;
    }
    throw e;
  }
}

const invokedDirectly =
  process.argv[1] &&
  fileURLToPath(import.meta.url) === (await import('node:fs')).realpathSync(process.argv[1]);
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`fatal: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
