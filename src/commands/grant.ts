import { messageOf } from '../errors.js';
import { classifyTokenError } from '../oauth/classify.js';
import { revokeAtProvider } from '../oauth/flows/revoke.js';
import { tokenlessGrant } from '../oauth/flows/store-grant.js';
import { refreshTokenHandler } from '../oauth/grants.js';
import { createProviderRegistry } from '../oauth/provider.js';
import type { AccountRecord, GrantKind, GrantRecord } from '../store/types.js';
import {
  type CommandContext,
  dispatch,
  EXIT_OK,
  EXIT_RUNTIME,
  type Group,
  isoOrDash,
  missing,
  readAll,
  requireAccount,
  table,
  UsageError,
} from './context.js';

const KINDS: GrantKind[] = ['refresh_token', 'client_credentials', 'jwt_bearer'];
type NewGrant = Omit<GrantRecord, 'accountId' | 'updatedAt'>;
/** `grant status`: some enabled account has no grant or one that is not active. */
const EXIT_NEEDS_ATTENTION = 3;

const GRANT: Group = {
  summary: 'Manage the OAuth grant behind each account.',
  sub: {
    import: {
      usage:
        'grant import <login> [--kind refresh_token|client_credentials|jwt_bearer] [--scope S] [--no-check]  < token',
      summary:
        'Store a grant for the account. For refresh_token the token is read from stdin (never from ' +
        'the command line, where other users can see it in `ps`) and checked with one refresh at the ' +
        'provider first; the grant is stored only if that works (exit 1 and nothing stored when the ' +
        'provider rejects the token or cannot be reached). --no-check stores it unchecked.',
      options: { kind: { type: 'string' }, scope: { type: 'string' }, 'no-check': { type: 'boolean' } },
      positionals: [1, 1],
      async run(v, [login = missing('login')], ctx) {
        const kind = (v.kind ?? 'refresh_token') as GrantKind;
        if (!KINDS.includes(kind)) throw new UsageError(`--kind must be one of ${KINDS.join(', ')}`);
        const a = await requireAccount(ctx, login);
        let grant: NewGrant = {
          ...tokenlessGrant(kind),
          scope: typeof v.scope === 'string' ? v.scope : null,
        };
        let checked = false;
        if (kind === 'refresh_token') {
          const refreshToken = (await readAll(ctx.stdin)).trim();
          if (refreshToken === '') throw new Error('no refresh token on stdin');
          if (/\s/.test(refreshToken)) throw new Error('stdin must hold exactly one refresh token');
          grant = { ...grant, refreshToken };
          if (v['no-check'] !== true) {
            const result = await checkRefreshGrant(ctx, a, grant);
            if (typeof result === 'string') {
              ctx.err(`error: ${result}; nothing stored for ${a.logins[0]}`);
              return EXIT_RUNTIME;
            }
            grant = result;
            checked = true;
          }
        }
        await ctx.store.putGrant(a.id, grant, 'cli');
        ctx.out(
          `grant (${kind}) stored for ${a.logins[0]}${checked ? ' (checked: the provider issued a token)' : ''}; it is used at the next login`,
        );
        return EXIT_OK;
      },
    },
    revoke: {
      usage: 'grant revoke <login>',
      summary:
        'Revoke the grant at the provider (RFC 7009, where offered) and delete it here; the ' +
        "account's next logins are refused until it is connected again",
      positionals: [1, 1],
      async run(_v, [login = missing('login')], ctx) {
        const a = await requireAccount(ctx, login);
        const grant = await ctx.store.getGrant(a.id);
        if (!grant) throw new Error(`${a.logins[0]} has no grant`);
        let outcome: string;
        let failed = false;
        try {
          outcome = await revokeAtProvider(
            createProviderRegistry(ctx.config.providers).get(a.provider),
            grant,
          );
        } catch (err) {
          // Deleting locally still stops the proxy from using the grant; the admin must finish at the provider.
          failed = true;
          outcome = `provider revocation failed (${messageOf(err)})`;
        }
        await ctx.store.deleteGrant(a.id, 'cli');
        await ctx.store.audit('cli', 'grant.revoke', a.id, outcome);
        const said: Record<string, string> = {
          revoked: 'revoked at the provider',
          not_offered: 'the provider offers no revocation endpoint: also remove the consent there',
          nothing_to_revoke: 'no token to revoke at the provider (app-only grant)',
        };
        (failed ? ctx.err : ctx.out)(
          `grant for ${a.logins[0]} removed; ${said[outcome] ?? outcome}. Its next logins are refused.`,
        );
        return failed ? EXIT_RUNTIME : EXIT_OK;
      },
    },
    status: {
      usage: 'grant status [<login>]',
      summary:
        'Grant state per account (needs_consent means the mailbox must be reconnected). Exit 0 when ' +
        `every enabled account listed has an active grant, ${EXIT_NEEDS_ATTENTION} when one has no grant or ` +
        'one that is not active (for cron and monitoring), 1 on errors.',
      positionals: [0, 1],
      async run(_v, [login], ctx) {
        const accounts =
          login === undefined ? await ctx.store.listAccounts() : [await requireAccount(ctx, login)];
        const rows = [['LOGIN', 'KIND', 'STATUS', 'SCOPE', 'TOKEN EXPIRES', 'LAST REFRESH', 'LAST ERROR']];
        let attention = false;
        for (const a of accounts) {
          const g = await ctx.store.getGrant(a.id);
          // A disabled account is off on purpose: its grant is no reason to alert.
          if (a.status === 'active' && g?.status !== 'active') attention = true;
          rows.push(
            g
              ? [
                  a.logins[0] ?? '-',
                  g.kind,
                  g.status,
                  g.scope ?? '-',
                  isoOrDash(g.accessTokenExpiresAt),
                  isoOrDash(g.lastRefreshAt),
                  g.lastError ?? '-',
                ]
              : [a.logins[0] ?? '-', '-', 'none', '-', '-', '-', '-'],
          );
        }
        ctx.out(rows.length === 1 ? 'no accounts' : table(rows));
        return attention ? EXIT_NEEDS_ATTENTION : EXIT_OK;
      },
    },
  },
};

/**
 * One refresh at the provider: the grant to store (with the rotated refresh token and the new
 * access token, since rotation has just made the imported token useless), or what failed.
 */
async function checkRefreshGrant(
  ctx: CommandContext,
  account: AccountRecord,
  grant: NewGrant,
): Promise<NewGrant | string> {
  const provider = createProviderRegistry(ctx.config.providers).get(account.provider);
  const now = Date.now();
  try {
    const t = await refreshTokenHandler.fetchToken({
      account,
      grant: { ...grant, accountId: account.id, updatedAt: now },
      provider,
      now,
    });
    return {
      ...grant,
      refreshToken: t.refreshToken ?? grant.refreshToken,
      accessToken: t.accessToken,
      accessTokenExpiresAt: t.expiresAt,
      scope: t.scope ?? grant.scope,
      lastRefreshAt: t.issuedAt,
    };
  } catch (err) {
    const f = classifyTokenError(err, now);
    return f.result === 'invalid_grant'
      ? `provider "${provider.name}" rejected the refresh token (${f.message})`
      : `could not check the refresh token at provider "${provider.name}" (${f.message}); retry, or store it unchecked with --no-check`;
  }
}

/** `imap-oauth-proxy grant …` */
export function runGrantCommand(args: string[], ctx: CommandContext): Promise<number> {
  return dispatch('grant', GRANT, args, ctx);
}
