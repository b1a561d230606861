import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import Provider, * as oidcProvider from 'oidc-provider';

/**
 * A real oidc-provider 9 on 127.0.0.1:<random port> over http, for broker and end-to-end tests.
 * Access tokens are opaque and introspectable by a separate client (Dovecot's oauth2 passdb).
 */
export interface TestOP {
  /** http://127.0.0.1:PORT */
  issuer: string;
  /** Confidential client for the proxy (client_secret_basic or _post). */
  client: { id: string; secret: string };
  /** Present when startOP got privateKeyJwtClient: a client that authenticates with private_key_jwt. */
  jwtClient?: { id: string };
  /** Client for Dovecot; url is the issuer's introspection endpoint. */
  introspection: { id: string; secret: string; url: string };
  /** POSTs to the token endpoint, not counting the harness's own code exchange in mintGrant. */
  tokenRequests(): number;
  /** Drives the real authorization-code flow (+PKCE S256) through the dev login/consent pages. */
  mintGrant(
    sub: string,
    opts?: { scope?: string; resources?: readonly string[] },
  ): Promise<{ access_token: string; refresh_token: string; expires_in: number }>;
  /**
   * A refresh-token grant as the proxy's client (not counted by tokenRequests), optionally for a
   * second resource (RFC 8707 `resource`, with `resources` in startOP). Rotates the refresh token.
   */
  refresh(
    refreshToken: string,
    opts?: { resource?: string; scope?: string },
  ): Promise<{ access_token: string; refresh_token?: string; expires_in: number; scope?: string }>;
  /** A client-credentials token as the proxy's client (needs `clientCredentials`), optionally for a resource. */
  clientCredentialsToken(opts?: {
    resource?: string;
    scope?: string;
  }): Promise<{ access_token: string; expires_in: number; scope?: string }>;
  /** RFC 7009 revocation as the proxy's client (revoking a refresh token also ends its grant). */
  revoke(token: string): Promise<void>;
  /** RFC 7662 introspection as the introspection client (what Dovecot sees). */
  introspect(token: string): Promise<Record<string, unknown>>;
  /** While down, token endpoint requests get their connection reset; the process keeps running. */
  setDown(down: boolean): void;
  /**
   * Every refresh-token rotation so far (with `recordRotations`): which tokens, when the OP
   * spent the old one and when the response carrying the new one was fully written to the socket.
   */
  rotations(): readonly Rotation[];
  close(): Promise<void>;
}

export interface Rotation {
  sub: string;
  consumedAt: number;
  /**
   * Set once the token response has been handed to the kernel — also when its client is
   * already dead: a request on the wire at a crash is still served.
   */
  finishedAt?: number;
  /** The spent and the new refresh token, each as the first 12 hex digits of its SHA-256. */
  spent: string;
  issued?: string;
}

export interface StartOPOptions {
  /** Access token (and client-credentials token) lifetime in seconds; default 3600. */
  accessTokenTtl?: number;
  /**
   * Issue a new refresh token on every refresh (default true). With it comes RFC 9700 reuse
   * detection: presenting a spent refresh token again revokes the whole grant.
   */
  refreshTokenRotation?: boolean;
  /** Record each rotation's timing (see TestOP.rotations). */
  recordRotations?: boolean;
  /** Enable RFC 8628 device authorization for the proxy's client. */
  deviceFlow?: boolean;
  /** Enable the client_credentials grant for the proxy's client. */
  clientCredentials?: boolean;
  /** `sub` reported by introspection for client-credentials tokens (default: the client id). */
  clientCredentialsSubject?: string;
  /**
   * Register the proxy's client as a native app with http://127.0.0.1/oauth/callback, so
   * (RFC 8252 §7.3) any loopback port is accepted: the admin server listens on port 0.
   */
  loopbackCallback?: boolean;
  /**
   * Also register client `proxy-jwt` (token_endpoint_auth_method private_key_jwt, grants
   * client_credentials + refresh_token) trusting the public keys in `jwks`. Turns on the
   * client_credentials feature; the proxy's client keeps its own grant types.
   */
  privateKeyJwtClient?: { jwks: { keys: Record<string, unknown>[] } };
  /**
   * Second resources (RFC 8707 resource indicators), e.g. a Graph-like API:
   * `{ 'https://graph.test': { scope: 'mail.send mail.readwrite', appRoles: 'mail.send' } }`.
   * - mintGrant asks for every listed resource and its scopes, so the grant may later ask for them.
   * - A refresh with `resource=<uri>` (and optionally `scope` ⊆ the resource's scopes) returns an
   *   opaque access token whose introspection has `aud: <uri>`, `sub` and the resource scopes.
   * - A refresh without `resource` returns the same token as without this option (no `aud`, the
   *   grant's OIDC scopes): the grant also names RESOURCELESS, so oidc-provider never falls back to
   *   the one granted resource (it would when the scope lacks openid), and defaultResource picks none.
   * - With `clientCredentials`, a client-credentials grant with `resource=<uri>` returns a token
   *   whose introspection has `aud`, `idtyp: 'app'` and `roles` (= appRoles, split), like an
   *   app-only Microsoft Graph token; the requested scope (e.g. `.default`) is not checked.
   */
  resources?: Record<string, { scope: string; appRoles?: string }>;
}

/** Provider settings (config keys) for the proxy's confidential client at `op`, found by discovery. */
export function opProviderConfig(op: TestOP) {
  return {
    issuer: op.issuer,
    client_id: op.client.id,
    client_secret: op.client.secret,
    allow_insecure_http: true,
    timeout_seconds: 5,
  };
}

/** How rotations name a token: enough to match it, without keeping or printing the token. */
export const shortHash = (token: string) => createHash('sha256').update(token).digest('hex').slice(0, 12);

const REDIRECT_URI = 'http://127.0.0.1/callback';
const LOOPBACK_CALLBACK = 'http://127.0.0.1/oauth/callback';
/** Marks the harness's own requests so tokenRequests() counts only the code under test. */
const INTERNAL = 'x-test-op-internal';
/** oidc-provider's error classes (not in its local type declaration). */
const { errors } = oidcProvider as unknown as { errors: { InvalidTarget: new () => Error } };
/** Names "no resource" in grants that have resources; see StartOPOptions.resources. */
export const RESOURCELESS = 'urn:test-op:no-resource';

export async function startOP(opts: StartOPOptions = {}): Promise<TestOP> {
  const ttl = opts.accessTokenTtl ?? 3600;
  const client = { id: 'proxy', secret: randomBytes(16).toString('hex') };
  const introClient = { id: 'dovecot', secret: randomBytes(16).toString('hex') };
  const ccSubject = opts.clientCredentialsSubject ?? client.id;
  const jwtClient = opts.privateKeyJwtClient ? { id: 'proxy-jwt' } : undefined;

  const grantTypes = ['authorization_code', 'refresh_token'];
  if (opts.deviceFlow) grantTypes.push('urn:ietf:params:oauth:grant-type:device_code');
  if (opts.clientCredentials) grantTypes.push('client_credentials');
  const resources = opts.resources ?? {};
  for (const uri of Object.keys(resources)) {
    if (!URL.canParse(uri) || uri.includes('#'))
      throw new Error(`test OP: resource ${uri} is not an absolute URI`);
  }

  let down = false;
  let tokenPosts = 0;
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: client.id,
        client_secret: client.secret,
        grant_types: grantTypes,
        response_types: ['code'],
        redirect_uris: opts.loopbackCallback ? [REDIRECT_URI, LOOPBACK_CALLBACK] : [REDIRECT_URI],
        ...(opts.loopbackCallback ? { application_type: 'native' } : {}),
        token_endpoint_auth_method: 'client_secret_basic',
        scope: 'openid offline_access email mail',
      },
      ...(opts.privateKeyJwtClient && jwtClient
        ? [
            {
              client_id: jwtClient.id,
              grant_types: ['client_credentials', 'refresh_token'],
              response_types: [],
              redirect_uris: [],
              token_endpoint_auth_method: 'private_key_jwt',
              jwks: opts.privateKeyJwtClient.jwks,
              scope: 'openid offline_access email mail',
            },
          ]
        : []),
      {
        client_id: introClient.id,
        client_secret: introClient.secret,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    scopes: ['openid', 'offline_access', 'email', 'mail'],
    claims: { openid: ['sub'], email: ['email'] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    findAccount: async (_ctx: unknown, sub: string) => ({
      accountId: sub,
      claims: async () => ({ sub, email: sub }),
    }),
    features: {
      devInteractions: { enabled: true },
      introspection: {
        enabled: true,
        // Dovecot introspects tokens issued to the proxy's client.
        allowedPolicy: async (_ctx: unknown, caller: { clientId: string }, token: { clientId: string }) =>
          caller.clientId === introClient.id || caller.clientId === token.clientId,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (_ctx: unknown, caller: { clientId: string }, token: { clientId: string }) =>
          caller.clientId === token.clientId,
      },
      deviceFlow: { enabled: opts.deviceFlow === true },
      clientCredentials: { enabled: opts.clientCredentials === true || !!opts.privateKeyJwtClient },
      resourceIndicators: {
        enabled: opts.resources !== undefined,
        // Never pick a resource the request did not name: resourceless refreshes stay as they were.
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx: unknown, indicator: string) => {
          if (indicator === RESOURCELESS) return { scope: '' };
          const r = resources[indicator];
          if (!r) throw new errors.InvalidTarget();
          return { scope: r.scope, accessTokenFormat: 'opaque', accessTokenTTL: ttl };
        },
      },
    },
    extraTokenClaims: async (_ctx: unknown, token: { kind: string; aud?: string }) => {
      if (token.kind !== 'ClientCredentials') return undefined;
      // Client-credentials tokens have no account; give introspection a username for them.
      const claims: Record<string, unknown> = { sub: ccSubject, username: ccSubject };
      const app = token.aud === undefined ? undefined : resources[token.aud];
      // App-only Graph tokens carry application roles instead of delegated scopes.
      if (app)
        Object.assign(claims, { idtyp: 'app', roles: (app.appRoles ?? '').split(' ').filter(Boolean) });
      return claims;
    },
    issueRefreshToken: async (
      _ctx: unknown,
      c: { grantTypeAllowed(t: string): boolean },
      source: { scopes: Set<string> },
    ) => c.grantTypeAllowed('refresh_token') && source.scopes.has('offline_access'),
    rotateRefreshToken: opts.refreshTokenRotation ?? true,
    pkce: { required: () => true },
    ttl: {
      AccessToken: ttl,
      IdToken: 3600,
      ClientCredentials: ttl,
      RefreshToken: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      Session: 3600,
      Interaction: 600,
      AuthorizationCode: 60,
      DeviceCode: 600,
    },
  });
  const handle = provider.callback();
  const rotations: Rotation[] = [];
  /** Rotations by the spent token's id: responses for one sub can overlap (a dead client's, a new one's). */
  const byJti = new Map<string, Rotation>();
  if (opts.recordRotations) {
    provider.on('refresh_token.consumed', (...args: unknown[]) => {
      const token = args[0] as { accountId: string; jti: string };
      const r: Rotation = { sub: token.accountId, consumedAt: Date.now(), spent: shortHash(token.jti) };
      rotations.push(r);
      byJti.set(token.jti, r);
    });
    provider.on('grant.success', (...args: unknown[]) => {
      const ctx = args[0] as {
        oidc: { entities: { RotatedRefreshToken?: { jti: string }; RefreshToken?: { jti: string } } };
        res: ServerResponse;
      };
      const spent = ctx.oidc.entities.RotatedRefreshToken?.jti;
      const r = spent === undefined ? undefined : byJti.get(spent);
      if (!r || spent === undefined) return;
      byJti.delete(spent);
      const issued = ctx.oidc.entities.RefreshToken?.jti;
      if (issued !== undefined) r.issued = shortHash(issued);
      ctx.res.once('finish', () => (r.finishedAt = Date.now()));
    });
  }

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/token' && req.method === 'POST') {
      if (down) {
        // Simulates an unreachable OP: the client sees a reset connection, not an HTTP error.
        req.socket.destroy();
        return;
      }
      if (req.headers[INTERNAL] === undefined) tokenPosts++;
    }
    handle(req, res);
  });

  const basic = (c: { id: string; secret: string }) =>
    `Basic ${Buffer.from(`${encodeURIComponent(c.id)}:${encodeURIComponent(c.secret)}`).toString('base64')}`;

  async function mintGrant(sub: string, mintOpts: { scope?: string; resources?: readonly string[] } = {}) {
    const wanted = mintOpts.resources ?? Object.keys(resources);
    const scopes = new Set((mintOpts.scope ?? 'openid offline_access').split(' ').filter(Boolean));
    for (const uri of wanted) {
      const r = resources[uri];
      if (!r) throw new Error(`test OP: resource ${uri} is not in startOP's resources`);
      for (const s of r.scope.split(' ').filter(Boolean)) scopes.add(s);
    }
    const jar = new Map<string, string>();
    const verifier = randomBytes(32).toString('base64url');
    const state = randomBytes(8).toString('hex');
    const auth = new URL('/auth', issuer);
    auth.search = new URLSearchParams({
      client_id: client.id,
      response_type: 'code',
      redirect_uri: REDIRECT_URI,
      scope: [...scopes].join(' '),
      prompt: 'consent',
      state,
      code_challenge: createHash('sha256').update(verifier).digest('base64url'),
      code_challenge_method: 'S256',
    }).toString();
    if (wanted.length > 0)
      for (const uri of [...wanted, RESOURCELESS]) auth.searchParams.append('resource', uri);

    const request = async (url: string, body?: URLSearchParams): Promise<string> => {
      const res = await fetch(url, {
        method: body ? 'POST' : 'GET',
        redirect: 'manual',
        headers: {
          cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; '),
          ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
        },
        body,
      });
      for (const c of res.headers.getSetCookie()) {
        const [pair = ''] = c.split(';');
        const eq = pair.indexOf('=');
        jar.set(pair.slice(0, eq), pair.slice(eq + 1));
      }
      await res.arrayBuffer();
      const location = res.headers.get('location');
      if (res.status < 300 || res.status >= 400 || !location) {
        throw new Error(`test OP: unexpected ${res.status} from ${new URL(url).pathname}`);
      }
      return new URL(location, url).toString();
    };

    // auth → interaction (login) → resume → interaction (consent) → resume → redirect_uri?code
    let url = await request(auth.toString());
    for (let step = 0; step < 8 && !url.startsWith(REDIRECT_URI); step++) {
      const path = new URL(url).pathname;
      if (path.startsWith('/interaction/')) {
        const form = new URLSearchParams(
          step === 0 ? { prompt: 'login', login: sub, password: 'x' } : { prompt: 'consent' },
        );
        url = await request(url, form);
      } else {
        url = await request(url);
      }
    }
    const back = new URL(url);
    const code = back.searchParams.get('code');
    if (!code || back.searchParams.get('state') !== state) {
      throw new Error(`test OP: authorization failed: ${back.searchParams.get('error') ?? 'no code'}`);
    }
    const t = await tokenGrant({
      grant_type: 'authorization_code',
      code,
      redirect_uri: REDIRECT_URI,
      code_verifier: verifier,
    });
    if (t.refresh_token === undefined)
      throw new Error('test OP: the code exchange returned no refresh token');
    return { access_token: t.access_token, refresh_token: t.refresh_token, expires_in: t.expires_in };
  }

  async function tokenGrant(params: Record<string, string | undefined>) {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined) body.set(k, v);
    const res = await fetch(new URL('/token', issuer), {
      method: 'POST',
      headers: {
        authorization: basic(client),
        'content-type': 'application/x-www-form-urlencoded',
        [INTERNAL]: '1',
      },
      body,
    });
    const json = (await res.json()) as Record<string, unknown>;
    if (!res.ok || typeof json.access_token !== 'string') {
      throw new Error(`test OP: ${params.grant_type} grant failed: ${String(json.error ?? res.status)}`);
    }
    return {
      access_token: json.access_token,
      expires_in: Number(json.expires_in),
      ...(typeof json.refresh_token === 'string' ? { refresh_token: json.refresh_token } : {}),
      ...(typeof json.scope === 'string' ? { scope: json.scope } : {}),
    };
  }

  async function revoke(token: string): Promise<void> {
    const res = await fetch(new URL('/token/revocation', issuer), {
      method: 'POST',
      headers: { authorization: basic(client), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    await res.arrayBuffer();
    if (!res.ok) throw new Error(`test OP: revocation failed with ${res.status}`);
  }

  async function introspect(token: string): Promise<Record<string, unknown>> {
    const res = await fetch(new URL('/token/introspection', issuer), {
      method: 'POST',
      headers: { authorization: basic(introClient), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    return (await res.json()) as Record<string, unknown>;
  }

  return {
    issuer,
    client,
    ...(jwtClient ? { jwtClient } : {}),
    introspection: { ...introClient, url: `${issuer}/token/introspection` },
    tokenRequests: () => tokenPosts,
    rotations: () => rotations,
    mintGrant,
    refresh: (refreshToken, o = {}) =>
      tokenGrant({
        grant_type: 'refresh_token',
        refresh_token: refreshToken,
        resource: o.resource,
        scope: o.scope,
      }),
    clientCredentialsToken: (o = {}) =>
      tokenGrant({ grant_type: 'client_credentials', resource: o.resource, scope: o.scope }),
    revoke,
    introspect,
    setDown: (d: boolean) => {
      down = d;
    },
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}

/** A grant mintGrant made, as the store keeps it right after an import: active, its token issued at `now`. */
export function storedGrant(
  g: { access_token: string; refresh_token: string; expires_in: number },
  now = Date.now(),
) {
  return {
    kind: 'refresh_token' as const,
    status: 'active' as const,
    refreshToken: g.refresh_token,
    accessToken: g.access_token,
    accessTokenExpiresAt: now + g.expires_in * 1000,
    scope: null,
    lastRefreshAt: now,
    lastError: null,
  };
}
