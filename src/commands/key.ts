import { messageOf } from '../errors.js';
import { generateKeyLine } from '../store/crypto.js';
import { rotateKeys } from '../store/index.js';
import { type CommandContext, dispatch, EXIT_OK, type Group, UsageError } from './context.js';

const KEY: Group = {
  summary: 'Manage the master key that encrypts stored tokens.',
  sub: {
    generate: {
      usage: 'key generate [--id ID]',
      summary: 'Print a new random "<id>:<base64>" key line for encryption.key or the key file',
      options: { id: { type: 'string' } },
      positionals: [0, 0],
      async run(v, _p, ctx) {
        try {
          ctx.out(generateKeyLine(typeof v.id === 'string' ? v.id : undefined));
        } catch (e) {
          throw new UsageError(messageOf(e));
        }
        return EXIT_OK;
      },
    },
    rotate: {
      usage: 'key rotate',
      summary:
        'Re-encrypt every stored token with the current (first) key, in one transaction. Put the new ' +
        'key first in the key file, keep the old line until this has run, then remove it.',
      positionals: [0, 0],
      async run(_v, _p, ctx) {
        const r = await rotateKeys(ctx.store, 'cli');
        ctx.out(`re-encrypted ${r.rotated} of ${r.total} stored secrets with key "${ctx.keyring.currentId}"`);
        return EXIT_OK;
      },
    },
  },
};

/** True when the command needs the store and keyring (`key generate` and help do not). */
export function keyCommandNeedsStore(args: string[]): boolean {
  return args[0] === 'rotate' && !args.includes('--help') && !args.includes('-h');
}

/** `imap-oauth-proxy key …` */
export function runKeyCommand(args: string[], ctx: CommandContext): Promise<number> {
  return dispatch('key', KEY, args, ctx);
}
