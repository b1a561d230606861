import { randomUUID } from 'node:crypto';
import { allowInsecureRequests, Configuration, customFetch, genericGrantRequest, None } from 'openid-client';
import { ConfigError } from '../errors.js';
import type { GrantHandler } from './grants.js';
import { toTokenSet } from './grants.js';
import { tracingFetch, withHttpTrace } from './http-trace.js';
import type { OAuthProvider } from './provider.js';
import { readServiceAccount, type ServiceAccountKey } from './service-account.js';
import { parsePrivateKey, type SigningKey, signJwt, toSigningKey } from './signing-key.js';

export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
/** Google accepts assertions valid for at most one hour. */
const ASSERTION_LIFETIME_S = 3600;

interface Signer {
  sa: ServiceAccountKey;
  key: SigningKey;
}

/** The RFC 7523 assertion a Google service account sends to act as `subject`. */
export async function serviceAccountAssertion(
  signer: Signer,
  opts: { subject: string; scope: string; audience: string; now: number },
): Promise<string> {
  const iat = Math.floor(opts.now / 1000);
  const kid = signer.sa.privateKeyId;
  return signJwt(
    signer.key,
    { typ: 'JWT', ...(kid ? { kid } : {}) },
    {
      iss: signer.sa.clientEmail,
      sub: opts.subject,
      scope: opts.scope,
      aud: opts.audience,
      iat,
      exp: iat + ASSERTION_LIFETIME_S,
      jti: randomUUID(),
    },
  );
}

/**
 * Google service account with domain-wide delegation: one JWT-bearer request per mailbox
 * (the assertion's `sub`), sent through openid-client's generic grant request without client
 * authentication (the signed assertion is the credential).
 */
export function createJwtBearerHandler(): GrantHandler {
  const signers = new Map<string, Promise<Signer>>();
  const configs = new WeakMap<OAuthProvider, Promise<Configuration>>();

  const signerFor = (provider: OAuthProvider): Promise<Signer> => {
    const file = provider.config.service_account_file;
    if (!file)
      throw new ConfigError(`providers.${provider.name}: service_account_file is required for jwt_bearer`);
    let s = signers.get(file);
    if (!s) {
      const sa = readServiceAccount(file);
      const where = `providers.${provider.name}.service_account_file`;
      s = toSigningKey(parsePrivateKey(sa.privateKeyPem, where), where).then((key) => ({ sa, key }));
      s.catch(() => signers.delete(file));
      signers.set(file, s);
    }
    return s;
  };

  const configFor = (provider: OAuthProvider, tokenUri: string | undefined): Promise<Configuration> => {
    let c = configs.get(provider);
    if (!c) {
      c = provider.configuration().then((base) => {
        const server = { ...base.serverMetadata() };
        // The key file's token_uri wins only when the config does not name an endpoint.
        if (!provider.config.token_endpoint && tokenUri) server.token_endpoint = tokenUri;
        const cfg = new Configuration(server, base.clientMetadata().client_id, undefined, None());
        cfg.timeout = provider.config.timeout_seconds;
        cfg[customFetch] = tracingFetch;
        if (provider.config.allow_insecure_http) allowInsecureRequests(cfg);
        return cfg;
      });
      c.catch(() => configs.delete(provider));
      configs.set(provider, c);
    }
    return c;
  };

  return {
    kind: 'jwt_bearer',
    per: 'account',
    async fetchToken({ account, grant, provider, now }) {
      const signer = await signerFor(provider);
      const config = await configFor(provider, signer.sa.tokenUri);
      const scope = grant.scope ?? provider.config.app_only_scope ?? (provider.config.scopes ?? []).join(' ');
      const audience = config.serverMetadata().token_endpoint as string;
      const assertion = await serviceAccountAssertion(signer, {
        subject: account.upstreamUser,
        scope,
        audience,
        now,
      });
      const { result } = await withHttpTrace(async () =>
        toTokenSet(await genericGrantRequest(config, JWT_BEARER_GRANT, { assertion }), now),
      );
      return result;
    },
  };
}
