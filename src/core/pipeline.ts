import type { CredentialChecker } from '../accounts/types.js';
import { upstreamFor } from '../config/presets.js';
import type { Config, ProviderConfig } from '../config/schema.js';
import { isProxyError, ProxyError } from '../errors.js';
import type { TokenBroker } from '../oauth/types.js';
import type { AccountRecord } from '../store/types.js';
import type { UpstreamCapabilities } from './capabilities.js';
import type { SessionRegistry } from './sessions.js';
import type { LoginHandler, LoginOutcome, LoginRequest, ProtocolName } from './types.js';
import type {
  AuthenticatedUpstream,
  UpstreamConnection,
  UpstreamConnector,
  UpstreamTarget,
} from './upstream.js';

export interface PipelineDeps {
  config: Config;
  credentials: CredentialChecker;
  broker: TokenBroker;
  /** The upstream connector of each protocol the listeners speak. */
  connectors: ReadonlyMap<ProtocolName, UpstreamConnector>;
  sessions: SessionRegistry;
  /** Learns what each upstream advertised on every connection (front doors read it). */
  capabilities?: UpstreamCapabilities;
  /** admin.public_url: where users reconnect a mailbox. */
  publicUrl?: string | undefined;
}

/**
 * The whole order of events for one login: credentials → per-account cap → access token and
 * upstream dial (in parallel) → SASL → one forced refresh and retry if upstream rejects the
 * token. Every failure leaves as a ProxyError reason the front door turns into a reply.
 */
export class LoginPipeline implements LoginHandler {
  readonly sessions: SessionRegistry;
  /** Resolved upstream settings per provider and override: schema parsing is not redone per login. */
  private readonly targets = new Map<string, UpstreamTarget>();

  constructor(private readonly deps: PipelineDeps) {
    this.sessions = deps.sessions;
  }

  /** The config's providers changed (a reload): forget the upstream settings resolved from them. */
  providersChanged(): void {
    this.targets.clear();
  }

  async login(req: LoginRequest, signal: AbortSignal): Promise<LoginOutcome> {
    const { log } = req.client;
    const cred = await this.deps.credentials.verify(req.login, req.password, req.client.address);
    if (!cred.ok) return { ok: false, reason: cred.reason };
    const account = cred.account;
    const accountLabel = account.logins[0] ?? String(account.id);
    // Made only on failure: a pino child per successful login is measurable at high login rates.
    const alog = () => log.child({ account: accountLabel, provider: account.provider });

    const cap = account.maxSessions ?? this.deps.config.limits.max_sessions_per_account;
    const slot = this.sessions.tryAcquire(account.id, cap);
    if (!slot) return { ok: false, reason: 'session_limit', account: accountLabel };
    try {
      const upstream = await this.authenticate(req, account, signal);
      // Destroying upstream makes the splice destroy the client socket too (no bytes injected).
      slot.attach({
        account: accountLabel,
        protocol: req.protocol,
        log,
        end: () => upstream.socket.destroy(),
      });
      return { ok: true, upstream, release: () => slot.release(), accountLabel };
    } catch (err) {
      slot.release();
      if (isProxyError(err)) {
        // Found out at login (perhaps another instance's write): this account's live sessions go too.
        if (err.reason === 'no_grant' || err.reason === 'needs_consent')
          this.sessions.end(account.id, err.reason);
        alog().info(
          { reason: err.reason, detail: err.detail, msg_detail: err.message },
          'login failed upstream',
        );
        return err.clientText === undefined
          ? { ok: false, reason: err.reason, account: accountLabel }
          : { ok: false, reason: err.reason, clientText: err.clientText, account: accountLabel };
      }
      alog().error({ err }, 'login failed with an unexpected error');
      return { ok: false, reason: 'protocol_error', account: accountLabel };
    }
  }

  private async authenticate(
    req: LoginRequest,
    account: AccountRecord,
    signal: AbortSignal,
  ): Promise<AuthenticatedUpstream> {
    const { protocol } = req;
    const provider = this.deps.config.providers[account.provider];
    if (!provider) {
      throw new ProxyError('no_grant', `account's provider "${account.provider}" is not in the config`, {
        detail: 'unknown_provider',
      });
    }
    const connector = this.deps.connectors.get(protocol);
    if (!connector) throw new Error(`no upstream connector for protocol ${protocol}`);
    const target = this.target(protocol, account, provider);
    const labels = { provider: account.provider };
    const { broker } = this.deps;
    const audience = target.token_audience;
    const tokenOpts = audience ? { audience } : {};
    const renew = async (force: boolean) =>
      (await broker.getAccessToken(account, { ...tokenOpts, forceRefresh: force })).token;

    // Token and dial in parallel: a warm token costs nothing, a refresh overlaps the TLS handshake.
    // A token that fails stops the dial, and a connection already made goes back unused.
    const dial = new AbortController();
    const stopDial = () => dial.abort(signal.reason);
    signal.addEventListener('abort', stopDial, { once: true });
    const [tokenR, connR] = await Promise.allSettled([
      broker.getAccessToken(account, tokenOpts).catch((err: unknown) => {
        dial.abort(err);
        throw err;
      }),
      connector.connect(target, labels, dial.signal),
    ]);
    signal.removeEventListener('abort', stopDial);
    if (tokenR.status === 'rejected') {
      if (connR.status === 'fulfilled') connR.value.recycle();
      throw tokenR.reason;
    }
    if (connR.status === 'rejected') throw connR.reason;
    const conn: UpstreamConnection = connR.value;
    try {
      this.checkScope(target, tokenR.value.scope);
      this.checkCapabilities(req, target, conn);
    } catch (err) {
      conn.recycle();
      throw err;
    }
    try {
      return await conn.authenticate(account.upstreamUser, tokenR.value.token, renew);
    } catch (err) {
      if (!isProxyError(err) || err.reason !== 'upstream_rejected') {
        conn.destroy();
        throw err;
      }
      broker.reportRejected(account, tokenR.value.token, audience);
    }
    // One retry with a freshly refreshed token, on the same connection when it is still usable.
    let fresh: string;
    try {
      fresh = await renew(true);
    } catch (err) {
      conn.destroy();
      throw err;
    }
    let retry = conn;
    if (!conn.reusable) {
      conn.destroy();
      retry = await connector.connect(target, labels, signal);
    }
    try {
      return await retry.authenticate(account.upstreamUser, fresh, renew);
    } catch (err) {
      retry.destroy();
      if (isProxyError(err) && err.reason === 'upstream_rejected')
        broker.reportRejected(account, fresh, audience);
      throw err;
    }
  }

  /** A token the provider granted without this protocol's scope cannot work: say how to fix it. */
  private checkScope(target: UpstreamTarget, granted: string | undefined): void {
    const needed = target.required_scope;
    if (!needed || granted === undefined || hasScope(granted, needed)) return;
    const url = this.deps.publicUrl;
    throw new ProxyError('scope_missing', `the grant lacks the scope ${needed}`, {
      detail: 'scope_missing',
      clientText: url
        ? `Reconnect the mailbox at ${url.replace(/\/+$/, '')}/connect to allow this (${shortScope(needed)})`
        : `Ask your administrator to reconnect the mailbox to allow this (${shortScope(needed)})`,
    });
  }

  private checkCapabilities(req: LoginRequest, target: UpstreamTarget, conn: UpstreamConnection): void {
    this.deps.capabilities?.note(req.protocol, target, conn.capabilities);
    if (!req.upstreamKeeps || req.upstreamKeeps(conn.capabilities)) return;
    throw new ProxyError(
      'upstream_unavailable',
      'the upstream lacks a feature already promised to the client',
      {
        detail: 'capability_mismatch',
        clientText: 'The mail server changed its features; connect again',
      },
    );
  }

  private target(protocol: ProtocolName, account: AccountRecord, provider: ProviderConfig): UpstreamTarget {
    const key = `${protocol}\0${account.provider}\0${account.upstreamOverride ? JSON.stringify(account.upstreamOverride) : ''}`;
    let t = this.targets.get(key);
    if (!t) {
      t = upstreamFor(provider, protocol, account.upstreamOverride);
      // Bounded by providers × distinct overrides; cleared wholesale if an odd store makes it grow.
      if (this.targets.size > 10_000) this.targets.clear();
      this.targets.set(key, t);
    }
    return t;
  }
}

/** Scope lists compare case-insensitively; Microsoft may answer `SMTP.Send` for `https://outlook.office.com/SMTP.Send`. */
export function hasScope(granted: string, needed: string): boolean {
  const want = needed.toLowerCase();
  const short = shortScope(want);
  return granted
    .toLowerCase()
    .split(/\s+/)
    .some((g) => g === want || (short !== '' && shortScope(g) === short));
}

function shortScope(scope: string): string {
  return scope.slice(scope.lastIndexOf('/') + 1);
}
