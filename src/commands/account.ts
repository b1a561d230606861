import { generateAppPassword, hashAppPassword } from '../accounts/passwords.js';
import { addAppOnlyGrant, connectCommand, linkCommand } from './account-onboarding.js';
import {
  type CommandContext,
  dispatch,
  EXIT_OK,
  EXIT_RUNTIME,
  type Group,
  isoOrDash,
  missing,
  requireAccount,
  table,
  UsageError,
} from './context.js';

const ACTOR = 'cli';
const LABEL_RE = /^[A-Za-z0-9._@-]{1,64}$/;

function statusCommand(status: 'active' | 'disabled', verb: string) {
  return {
    usage: `account ${verb} <login>`,
    summary: `${verb === 'enable' ? 'Allow' : 'Refuse'} logins for the account`,
    positionals: [1, 1] as [number, number],
    async run(_v: unknown, [login = missing('login')]: string[], ctx: CommandContext) {
      const a = await requireAccount(ctx, login);
      await ctx.store.setAccountStatus(a.id, status, ACTOR);
      ctx.out(`account ${a.logins[0]} ${verb}d`);
      return EXIT_OK;
    },
  };
}

const ACCOUNT: Group = {
  summary: 'Manage accounts: the login names legacy clients use and the mailbox each maps to.',
  sub: {
    add: {
      usage: 'account add <login> --provider P [--upstream-user EMAIL] [--max-sessions N] [--grant app-only]',
      summary:
        'Create an account (then add an app password and connect a grant); --grant app-only stores a ' +
        'client-credentials or service-account grant that needs no user sign-in',
      options: {
        provider: { type: 'string' },
        grant: { type: 'string' },
        'upstream-user': { type: 'string' },
        'max-sessions': { type: 'string' },
      },
      positionals: [1, 1],
      async run(v, [login = missing('login')], ctx) {
        const provider = v.provider;
        if (typeof provider !== 'string') throw new UsageError('--provider is required');
        if (!(provider in ctx.config.providers)) {
          const known = Object.keys(ctx.config.providers).join(', ') || 'none';
          throw new UsageError(`unknown provider "${provider}" (configured: ${known})`);
        }
        if (v.grant !== undefined && v.grant !== 'app-only') throw new UsageError('--grant must be app-only');
        const upstreamUser = typeof v['upstream-user'] === 'string' ? v['upstream-user'] : login;
        if (!/^[^\s@]+@[^\s@]+$/.test(upstreamUser)) {
          throw new UsageError('--upstream-user EMAIL is required when the login is not a mail address');
        }
        let maxSessions: number | null = null;
        if (typeof v['max-sessions'] === 'string') {
          maxSessions = Number(v['max-sessions']);
          if (!Number.isInteger(maxSessions) || maxSessions < 1) {
            throw new UsageError('--max-sessions must be a positive integer');
          }
        }
        const a = await ctx.store.createAccount({ login, upstreamUser, provider, maxSessions }, ACTOR);
        ctx.out(
          `account ${a.logins[0]} created (id ${a.id}, mailbox ${a.upstreamUser}, provider ${provider})`,
        );
        return v.grant === 'app-only' ? addAppOnlyGrant(ctx, a) : EXIT_OK;
      },
    },
    connect: connectCommand,
    link: linkCommand,
    list: {
      usage: 'account list',
      summary: 'List accounts',
      positionals: [0, 0],
      async run(_v, _p, ctx) {
        const rows = [['ID', 'LOGINS', 'MAILBOX', 'PROVIDER', 'STATUS', 'PASSWORDS', 'GRANT', 'LAST LOGIN']];
        for (const a of await ctx.store.listAccounts()) {
          const [pw, g] = await Promise.all([ctx.store.listAppPasswords(a.id), ctx.store.getGrant(a.id)]);
          rows.push([
            String(a.id),
            a.logins.join(','),
            a.upstreamUser,
            a.provider,
            a.status,
            String(pw.length),
            g ? g.status : 'none',
            isoOrDash(a.lastLoginAt),
          ]);
        }
        ctx.out(rows.length === 1 ? 'no accounts' : table(rows));
        return EXIT_OK;
      },
    },
    show: {
      usage: 'account show <login>',
      summary: 'Show one account, its app passwords (labels only) and grant status; never secrets',
      positionals: [1, 1],
      async run(_v, [login = missing('login')], ctx) {
        const a = await requireAccount(ctx, login);
        const [pw, g] = await Promise.all([ctx.store.listAppPasswords(a.id), ctx.store.getGrant(a.id)]);
        const lines = [
          `id:            ${a.id}`,
          `logins:        ${a.logins.join(', ')}`,
          `mailbox:       ${a.upstreamUser}`,
          `provider:      ${a.provider}`,
          `status:        ${a.status}`,
          `max sessions:  ${a.maxSessions ?? `default (${ctx.config.limits.max_sessions_per_account})`}`,
          `created:       ${isoOrDash(a.createdAt)}`,
          `last login:    ${isoOrDash(a.lastLoginAt)}`,
          `grant:         ${g ? `${g.kind}, ${g.status}${g.lastError ? ` (last error: ${g.lastError})` : ''}` : 'none'}`,
          `app passwords: ${pw.length === 0 ? 'none' : pw.map((p) => `${p.label} (#${p.id})`).join(', ')}`,
        ];
        ctx.out(lines.join('\n'));
        return EXIT_OK;
      },
    },
    disable: statusCommand('disabled', 'disable'),
    enable: statusCommand('active', 'enable'),
    remove: {
      usage: 'account remove <login>',
      summary: 'Delete the account with its app passwords and grant (the audit log is kept)',
      positionals: [1, 1],
      async run(_v, [login = missing('login')], ctx) {
        const a = await requireAccount(ctx, login);
        await ctx.store.deleteAccount(a.id, ACTOR);
        ctx.out(`account ${a.logins[0]} removed`);
        return EXIT_OK;
      },
    },
    alias: {
      summary: 'Extra login names for an account',
      sub: {
        add: {
          usage: 'account alias add <login> <alias>',
          summary: 'Let the account also log in as <alias>',
          positionals: [2, 2],
          async run(_v, [login = missing('login'), alias = missing('alias')], ctx) {
            const a = await requireAccount(ctx, login);
            await ctx.store.addLogin(a.id, alias, ACTOR);
            ctx.out(`login ${alias.trim().toLowerCase()} now maps to account ${a.logins[0]}`);
            return EXIT_OK;
          },
        },
      },
    },
    password: {
      summary: 'App passwords legacy clients log in with',
      sub: {
        add: {
          usage: 'account password add <login> [--label L]',
          summary: 'Generate an app password and print it once',
          options: { label: { type: 'string' } },
          positionals: [1, 1],
          async run(v, [login = missing('login')], ctx) {
            const a = await requireAccount(ctx, login);
            const existing = new Set((await ctx.store.listAppPasswords(a.id)).map((p) => p.label));
            let label = typeof v.label === 'string' ? v.label : 'default';
            if (typeof v.label !== 'string')
              for (let i = 2; existing.has(label); i++) label = `password-${i}`;
            if (!LABEL_RE.test(label)) throw new UsageError('--label: 1-64 of letters, digits and . _ @ -');
            const password = generateAppPassword();
            await ctx.store.addAppPassword(a.id, label, await hashAppPassword(password), ACTOR);
            ctx.out(
              `app password "${label}" for ${a.logins[0]}:\n\n    ${password}\n\n` +
                'Store it in the mail client now: it is not stored and cannot be shown again.',
            );
            return EXIT_OK;
          },
        },
        list: {
          usage: 'account password list <login>',
          summary: 'List app password labels with creation and last use',
          positionals: [1, 1],
          async run(_v, [login = missing('login')], ctx) {
            const a = await requireAccount(ctx, login);
            const rows = [['ID', 'LABEL', 'CREATED', 'LAST USED']];
            for (const p of await ctx.store.listAppPasswords(a.id)) {
              rows.push([String(p.id), p.label, isoOrDash(p.createdAt), isoOrDash(p.lastUsedAt)]);
            }
            ctx.out(rows.length === 1 ? `no app passwords for ${a.logins[0]}` : table(rows));
            return EXIT_OK;
          },
        },
        revoke: {
          usage: 'account password revoke <login> <label|id>',
          summary: 'Revoke an app password; clients using it fail their next login',
          positionals: [2, 2],
          async run(_v, [login = missing('login'), which = missing('label-or-id')], ctx) {
            const a = await requireAccount(ctx, login);
            if (!(await ctx.store.revokeAppPassword(a.id, which, ACTOR))) {
              ctx.err(`error: no app password "${which}" for ${a.logins[0]}`);
              return EXIT_RUNTIME;
            }
            ctx.out(`app password "${which}" revoked for ${a.logins[0]}`);
            return EXIT_OK;
          },
        },
      },
    },
  },
};

/** `imap-oauth-proxy account …` */
export function runAccountCommand(args: string[], ctx: CommandContext): Promise<number> {
  return dispatch('account', ACCOUNT, args, ctx);
}
