import QRCode from 'qrcode';
import { linkUrl } from '../admin/onboarding/connect.js';
import { messageOf } from '../errors.js';
import { OAuthTokenBroker } from '../oauth/broker.js';
import { runDeviceFlow } from '../oauth/flows/device.js';
import { mailboxOf } from '../oauth/flows/identity.js';
import { storeRefreshGrant, tokenlessGrant } from '../oauth/flows/store-grant.js';
import { createJwtBearerHandler } from '../oauth/jwt-bearer.js';
import { createProviderRegistry } from '../oauth/provider.js';
import type { AccountRecord } from '../store/types.js';
import {
  type CommandContext,
  EXIT_OK,
  EXIT_RUNTIME,
  type Leaf,
  missing,
  requireAccount,
  UsageError,
} from './context.js';

const ACTOR = 'cli';
const DEFAULT_LINK_HOURS = 72;

/**
 * The QR code for the device prompt: coloured (ANSI) on a terminal unless NO_COLOR is set; plain
 * UTF-8 blocks, dark modules as █, when the output goes to a file, a pipe or a log.
 */
export function renderQr(
  text: string,
  terminal = process.stdout.isTTY === true && !process.env.NO_COLOR,
): Promise<string> {
  return QRCode.toString(text, terminal ? { type: 'terminal', small: true } : { type: 'utf8' });
}

/** `account connect <login>`: RFC 8628 device flow with a terminal QR code. */
export const connectCommand: Leaf = {
  usage: 'account connect <login>',
  summary: 'Connect the mailbox by device sign-in: shows a URL, a code and a QR code, then waits',
  positionals: [1, 1],
  async run(_v, [login = missing('login')], ctx) {
    const account = await requireAccount(ctx, login);
    const provider = createProviderRegistry(ctx.config.providers).get(account.provider);
    const scope = (provider.config.scopes ?? []).join(' ');
    let dots = 0;
    const tokens = await runDeviceFlow(provider, {
      scope,
      async onPrompt(da) {
        const target = da.verification_uri_complete ?? da.verification_uri;
        const qr = await renderQr(target);
        ctx.out(
          `To connect ${account.upstreamUser}, open\n\n    ${da.verification_uri}\n\nand enter the code\n\n    ${da.user_code}\n\nor scan:\n${qr}\nWaiting for sign-in (the code expires in ${Math.round(da.expires_in / 60)} min; Ctrl-C to cancel)…`,
        );
      },
      onProgress(p) {
        if (p.type === 'slow_down')
          ctx.out(`  the provider asked to poll more slowly: every ${p.intervalS} s now`);
        else if (++dots % 6 === 0) ctx.out(`  still waiting (${p.remainingS} s left)…`);
      },
    });
    const mailbox = await mailboxOf(provider, tokens).catch(() => undefined);
    if (mailbox && mailbox !== account.upstreamUser.toLowerCase()) {
      ctx.err(
        `error: signed in as ${mailbox}, but the account's mailbox is ${account.upstreamUser}; nothing stored`,
      );
      return EXIT_RUNTIME;
    }
    await storeRefreshGrant(ctx.store, account.id, tokens, ACTOR);
    ctx.out(
      `connected: ${account.logins[0]} → ${account.upstreamUser} (grant stored; used at the next login)`,
    );
    return EXIT_OK;
  },
};

/** `account link <login>`: an authorization-code link served by the admin HTTP server. */
export const linkCommand: Leaf = {
  usage: 'account link <login> [--hours N]',
  summary: 'Print a sign-in link (authorization code + PKCE via the admin server) for the mailbox owner',
  options: { hours: { type: 'string' } },
  positionals: [1, 1],
  async run(v, [login = missing('login')], ctx) {
    const publicUrl = ctx.config.admin.public_url;
    if (!publicUrl) throw new UsageError('set admin.public_url: the link points at the admin server');
    const hours = typeof v.hours === 'string' ? Number(v.hours) : DEFAULT_LINK_HOURS;
    if (!(hours > 0 && hours <= 24 * 30)) throw new UsageError('--hours must be between 0 and 720');
    const account = await requireAccount(ctx, login);
    const url = linkUrl(publicUrl, ctx.keyring, account, hours * 3600_000);
    ctx.out(
      `Send this link to the owner of ${account.upstreamUser} (valid ${hours} h; the proxy must be running):\n\n    ${url}\n\n` +
        `The provider must accept the redirect URI ${publicUrl.replace(/\/+$/, '')}/oauth/callback`,
    );
    return EXIT_OK;
  },
};

/**
 * `account add … --grant app-only`: client credentials (Microsoft app-only) or a Google service
 * account (JWT bearer), then one token request to prove the setup works.
 */
export async function addAppOnlyGrant(ctx: CommandContext, account: AccountRecord): Promise<number> {
  const providers = createProviderRegistry(ctx.config.providers);
  const provider = providers.get(account.provider);
  const kind = provider.config.service_account_file ? 'jwt_bearer' : 'client_credentials';
  await ctx.store.putGrant(account.id, tokenlessGrant(kind), ACTOR);
  const broker = new OAuthTokenBroker({
    store: ctx.store,
    providers,
    tokens: ctx.config.tokens,
    handlers: [createJwtBearerHandler()],
    log: ctx.log,
  });
  try {
    const t = await broker.getAccessToken(account);
    ctx.out(
      `app-only grant (${kind}) stored; test token obtained, valid ${Math.round((t.expiresAt - Date.now()) / 1000)} s`,
    );
    return EXIT_OK;
  } catch (err) {
    ctx.err(
      `warning: app-only grant (${kind}) stored, but the test token request failed: ${messageOf(err)}\n` +
        'check the client credentials, the scope and the permissions granted at the provider',
    );
    return EXIT_RUNTIME;
  }
}
