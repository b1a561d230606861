import type { CredentialChecker } from '../accounts/types.js';
import { upstreamFor } from '../config/presets.js';
import type { Config, ProviderConfig } from '../config/schema.js';
import { isProxyError, ProxyError } from '../errors.js';
import { isWarm } from '../net/pool.js';
import type { TokenBroker } from '../oauth/types.js';
import type { AccountRecord } from '../store/types.js';
import { SessionRegistry } from './sessions.js';
import type { LoginHandler, LoginOutcome, LoginRequest } from './types.js';
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
  connector: UpstreamConnector;
  sessions?: SessionRegistry;
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
    this.sessions = deps.sessions ?? new SessionRegistry();
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
      const upstream = await this.authenticate(account, signal);
      // Destroying upstream makes the splice destroy the client socket too (no bytes injected).
      slot.attach({ account: accountLabel, log, end: () => upstream.socket.destroy() });
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

  private async authenticate(account: AccountRecord, signal: AbortSignal): Promise<AuthenticatedUpstream> {
    const provider = this.deps.config.providers[account.provider];
    if (!provider) {
      throw new ProxyError('no_grant', `account's provider "${account.provider}" is not in the config`, {
        detail: 'unknown_provider',
      });
    }
    const target = this.target(account, provider);
    const labels = { provider: account.provider };
    const { broker, connector } = this.deps;

    // Token and dial in parallel: a warm token costs nothing, a refresh overlaps the TLS handshake.
    const [tokenR, connR] = await Promise.allSettled([
      broker.getAccessToken(account),
      connector.connect(target, labels, signal),
    ]);
    if (tokenR.status === 'rejected') {
      if (connR.status === 'fulfilled') connR.value.destroy();
      throw tokenR.reason;
    }
    if (connR.status === 'rejected') throw connR.reason;
    const conn: UpstreamConnection = connR.value;
    try {
      return await conn.authenticate(account.upstreamUser, tokenR.value.token);
    } catch (err) {
      if (!isProxyError(err) || err.reason !== 'upstream_rejected') {
        conn.destroy();
        // A pre-dialled connection the server closed while it waited: one fresh dial, same token.
        if (isWarm(conn) && isProxyError(err) && STALE.has(err.detail ?? '')) {
          return this.freshAttempt(account, target, labels, tokenR.value.token, signal);
        }
        throw err;
      }
      broker.reportRejected(account, tokenR.value.token);
    }
    // One retry with a freshly refreshed token, on the same connection when it is still usable.
    let fresh: string;
    try {
      fresh = (await broker.getAccessToken(account, { forceRefresh: true })).token;
    } catch (err) {
      conn.destroy();
      throw err;
    }
    if (!conn.reusable) {
      conn.destroy();
      return this.freshAttempt(account, target, labels, fresh, signal);
    }
    try {
      return await conn.authenticate(account.upstreamUser, fresh);
    } catch (err) {
      conn.destroy();
      if (isProxyError(err) && err.reason === 'upstream_rejected') broker.reportRejected(account, fresh);
      throw err;
    }
  }

  /** One AUTHENTICATE on a newly dialled connection (never a warm one). */
  private async freshAttempt(
    account: AccountRecord,
    target: UpstreamTarget,
    labels: { provider: string },
    token: string,
    signal: AbortSignal,
  ): Promise<AuthenticatedUpstream> {
    const { connector } = this.deps;
    const conn = await (connector.connectFresh ?? connector.connect).call(connector, target, labels, signal);
    try {
      return await conn.authenticate(account.upstreamUser, token);
    } catch (err) {
      conn.destroy();
      if (isProxyError(err) && err.reason === 'upstream_rejected')
        this.deps.broker.reportRejected(account, token);
      throw err;
    }
  }

  private target(account: AccountRecord, provider: ProviderConfig): UpstreamTarget {
    const key = `${account.provider}\0${account.upstreamOverride ? JSON.stringify(account.upstreamOverride) : ''}`;
    let t = this.targets.get(key);
    if (!t) {
      t = upstreamFor(provider, account.upstreamOverride);
      // Bounded by providers × distinct overrides; cleared wholesale if an odd store makes it grow.
      if (this.targets.size > 10_000) this.targets.clear();
      this.targets.set(key, t);
    }
    return t;
  }
}

/** Failures of the connection itself (closed or reset before an answer), never a server's NO. */
const STALE = new Set(['closed', 'socket_error', 'not_reusable']);
