import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { generateAppPassword, hashAppPassword } from '../../accounts/passwords.js';
import type { Config } from '../../config/schema.js';
import type { Logger } from '../../log.js';
import {
  beginAuthorization,
  completeAuthorization,
  type PendingAuthorization,
} from '../../oauth/flows/authcode.js';
import { domainAllowed, mailboxOf } from '../../oauth/flows/identity.js';
import { seal, unseal } from '../../oauth/flows/sealed.js';
import { storeRefreshGrant } from '../../oauth/flows/store-grant.js';
import type { ProviderRegistry } from '../../oauth/provider.js';
import type { Keyring } from '../../store/crypto.js';
import type { AccountRecord, GrantStore } from '../../store/types.js';
import type { AdminAuthLimiter } from '../auth-limiter.js';
import { readCookie, stateCookie } from './cookies.js';
import { esc, page, redirect } from './html.js';
import { clientSettingsHtml } from './settings.js';

export const CALLBACK_PATH = '/oauth/callback';
export const START_PATH = '/connect/start';
const COOKIE = 'iop_oauth';
/** Sign-in at the IdP must finish within this time. */
const STATE_TTL_MS = 10 * 60_000;
export const LINK_PURPOSE = 'link';
const STATE_PURPOSE = 'state';
const ACTOR = 'connect-page';

export interface OnboardingDeps {
  store: GrantStore;
  config: Config;
  keyring: Keyring;
  providers: ProviderRegistry;
  log: Logger;
  addresses: Record<string, AddressInfo>;
  /** Shared with /metrics so guesses on either count together; /status makes its own if absent. */
  authLimiter?: AdminAuthLimiter;
}

/** What `account link` seals into its URL. */
interface LinkToken {
  accountId: number;
  provider: string;
}

/** The URL an admin hands a user to connect an existing account (valid for `ttlMs`). */
export function linkUrl(publicUrl: string, keyring: Keyring, account: AccountRecord, ttlMs: number): string {
  const t = seal(keyring, LINK_PURPOSE, { accountId: account.id, provider: account.provider }, ttlMs);
  const u = new URL(`${base(publicUrl)}${START_PATH}`);
  u.searchParams.set('link', t);
  return u.toString();
}

function base(publicUrl: string): string {
  return publicUrl.replace(/\/+$/, '');
}

/** Providers a user may pick on /connect: those with an authorization endpoint or discovery. */
function interactiveProviders(config: Config): string[] {
  return Object.entries(config.providers)
    .filter(([, p]) => p.authorization_endpoint || (p.issuer && !p.token_endpoint))
    .filter(([, p]) => !p.service_account_file)
    .map(([name]) => name);
}

export function connectPage(deps: OnboardingDeps) {
  return (_req: IncomingMessage, res: ServerResponse): void => {
    if (!deps.config.admin.connect_page) {
      page(res, 404, 'Not found', '<p>The self-service page is not enabled.</p>');
      return;
    }
    const names = interactiveProviders(deps.config);
    const buttons = names
      .map(
        (n) =>
          `<a class="button" href="${START_PATH}?provider=${encodeURIComponent(n)}">Sign in with ${esc(n)}</a>`,
      )
      .join('');
    const domains = deps.config.admin.allowed_domains;
    page(
      res,
      200,
      'Connect your mailbox',
      `<p>Sign in with your mail account. You then get an app password for your mail program (scanner, older Outlook, fetchmail …).</p>
${buttons || '<p class="error">No sign-in provider is configured.</p>'}
${domains.length ? `<p class="muted">Mailboxes at ${domains.map(esc).join(', ')} only.</p>` : ''}`,
    );
  };
}

export function startHandler(deps: OnboardingDeps) {
  return async (_req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const publicUrl = deps.config.admin.public_url;
    if (!publicUrl) {
      page(res, 503, 'Not configured', '<p class="error">admin.public_url is not set.</p>');
      return;
    }
    let providerName: string | null;
    let account: AccountRecord | null = null;
    const link = url.searchParams.get('link');
    if (link !== null) {
      const t = unseal<LinkToken>(deps.keyring, LINK_PURPOSE, link);
      account = t ? await deps.store.getAccount(t.accountId) : null;
      if (!t || !account || account.provider !== t.provider) {
        page(
          res,
          400,
          'Link expired',
          '<p class="error">This link is invalid or has expired. Ask your administrator for a new one.</p>',
        );
        return;
      }
      providerName = t.provider;
    } else {
      providerName = url.searchParams.get('provider');
      if (
        !deps.config.admin.connect_page ||
        !providerName ||
        !interactiveProviders(deps.config).includes(providerName)
      ) {
        page(res, 404, 'Not found', '<p>Unknown provider.</p>');
        return;
      }
    }
    const redirectUri = `${base(publicUrl)}${CALLBACK_PATH}`;
    const { url: authUrl, pending } = await beginAuthorization(
      deps.providers.get(providerName),
      redirectUri,
      account?.id,
      account?.upstreamUser,
    );
    const cookie = stateCookie(COOKIE, seal(deps.keyring, STATE_PURPOSE, pending, STATE_TTL_MS), {
      path: CALLBACK_PATH,
      secure: publicUrl.startsWith('https:'),
      maxAgeS: STATE_TTL_MS / 1000,
    });
    redirect(res, authUrl.toString(), [cookie]);
  };
}

export function callbackHandler(deps: OnboardingDeps) {
  return async (req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> => {
    const publicUrl = deps.config.admin.public_url;
    const sealed = readCookie(req, COOKIE);
    const pending = sealed ? unseal<PendingAuthorization>(deps.keyring, STATE_PURPOSE, sealed) : null;
    // One use only: the cookie is cleared whatever happens next.
    res.setHeader(
      'set-cookie',
      stateCookie(COOKIE, '', { path: CALLBACK_PATH, secure: !!publicUrl?.startsWith('https:'), maxAgeS: 0 }),
    );
    const again = deps.config.admin.connect_page ? '<p><a href="/connect">Start again</a></p>' : '';
    if (!pending || !publicUrl) {
      page(
        res,
        400,
        'Sign-in expired',
        `<p class="error">The sign-in took too long or was started in another browser.</p>${again}`,
      );
      return;
    }
    const idpError = url.searchParams.get('error');
    if (idpError) {
      page(
        res,
        400,
        'Sign-in not completed',
        `<p class="error">The provider answered: ${esc(idpError.slice(0, 100))}</p>${again}`,
      );
      return;
    }
    const provider = deps.providers.get(pending.provider);
    // Rebuild the URL the IdP redirected to (the admin server sees only the path and query).
    const current = new URL(`${base(publicUrl)}${CALLBACK_PATH}${url.search}`);
    let tokens: Awaited<ReturnType<typeof completeAuthorization>>;
    let mailbox: string | undefined;
    try {
      tokens = await completeAuthorization(provider, current, pending);
      mailbox = await mailboxOf(provider, tokens);
    } catch (err) {
      deps.log.warn({ err, provider: provider.name }, 'connect: code exchange failed');
      page(
        res,
        400,
        'Sign-in failed',
        `<p class="error">The sign-in could not be completed. Please try again.</p>${again}`,
      );
      return;
    }
    if (pending.accountId !== undefined) {
      await finishLink(deps, res, pending.accountId, mailbox, tokens);
      return;
    }
    if (!mailbox) {
      page(
        res,
        400,
        'No mailbox address',
        '<p class="error">The provider did not tell us your mail address.</p>',
      );
      return;
    }
    if (!domainAllowed(mailbox, deps.config.admin.allowed_domains)) {
      deps.log.warn({ provider: provider.name }, 'connect: mailbox domain not allowed');
      page(
        res,
        403,
        'Not allowed',
        `<p class="error">Mailboxes at this domain cannot be connected here.</p>`,
      );
      return;
    }
    let account = await deps.store.getAccountByLogin(mailbox);
    if (account && (account.provider !== provider.name || account.status !== 'active')) {
      page(
        res,
        409,
        'Contact your administrator',
        '<p class="error">This mailbox is managed differently; contact your administrator.</p>',
      );
      return;
    }
    account ??= await deps.store.createAccount(
      { login: mailbox, upstreamUser: mailbox, provider: provider.name },
      ACTOR,
    );
    await storeRefreshGrant(deps.store, account.id, tokens, ACTOR);
    const password = generateAppPassword();
    const label = `connect-${new Date()
      .toISOString()
      .replace(/[-:]|\.\d+Z$/g, '')
      .replace('T', '-')}`;
    await deps.store.addAppPassword(account.id, label, await hashAppPassword(password), ACTOR);
    deps.log.info({ accountId: account.id, provider: provider.name }, 'connect: mailbox connected');
    page(
      res,
      200,
      'Mailbox connected',
      `<p>Your mailbox <strong>${esc(mailbox)}</strong> is connected. Your new app password:</p>
<p><span class="password" id="app-password">${esc(password)}</span></p>
<p class="warn">Copy it into your mail program now: it is shown only once and cannot be shown again.</p>
<h2>Mail client settings</h2>
${clientSettingsHtml(deps.config, account.logins[0] ?? mailbox, deps.addresses)}`,
    );
  };
}

async function finishLink(
  deps: OnboardingDeps,
  res: ServerResponse,
  accountId: number,
  mailbox: string | undefined,
  tokens: Awaited<ReturnType<typeof completeAuthorization>>,
): Promise<void> {
  const account = await deps.store.getAccount(accountId);
  if (!account) {
    page(res, 404, 'Account removed', '<p class="error">The account no longer exists.</p>');
    return;
  }
  // The signed-in user must own the mailbox the administrator linked.
  if (mailbox && mailbox !== account.upstreamUser.toLowerCase()) {
    deps.log.warn({ accountId }, 'link: signed-in mailbox differs from the account');
    page(
      res,
      403,
      'Wrong account',
      `<p class="error">You signed in as ${esc(mailbox)}, but this link is for ${esc(account.upstreamUser)}.</p>`,
    );
    return;
  }
  await storeRefreshGrant(deps.store, account.id, tokens, ACTOR);
  deps.log.info({ accountId }, 'link: mailbox connected');
  page(
    res,
    200,
    'Mailbox connected',
    `<p>The mailbox <strong>${esc(account.upstreamUser)}</strong> is connected. You can close this page.</p>`,
  );
}
