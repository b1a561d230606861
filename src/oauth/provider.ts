import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  allowInsecureRequests,
  type ClientAuth,
  ClientSecretBasic,
  ClientSecretPost,
  Configuration,
  customFetch,
  discovery,
  None,
  type ServerMetadata,
} from 'openid-client';
import type { ProviderConfig } from '../config/schema.js';
import { ConfigError, messageOf } from '../errors.js';
import { rotationCapture } from './grants.js';
import { tracingFetch } from './http-trace.js';
import { readServiceAccount } from './service-account.js';
import { parsePrivateKey, type SigningKey, signJwt, thumbprintToX5t, toSigningKey } from './signing-key.js';

/** Every provider request: traced, and a rotated refresh token handed over the moment it arrives. */
const tokenFetch = rotationCapture(tracingFetch);

const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ASSERTION_LIFETIME_S = 60;

/** One configured OAuth provider: its settings and a lazily built openid-client Configuration. */
export interface OAuthProvider {
  readonly name: string;
  readonly config: ProviderConfig;
  /** Discovers (once, retried after a failure) or builds the openid-client Configuration. */
  configuration(): Promise<Configuration>;
}

export interface ProviderRegistry {
  /** Throws ConfigError for a provider name that is not configured. */
  get(name: string): OAuthProvider;
  /** A reload's providers: a provider whose settings changed is built afresh (discovery again). */
  update(providers: Record<string, ProviderConfig>): void;
}

export function createProviderRegistry(initial: Record<string, ProviderConfig>): ProviderRegistry {
  const made = new Map<string, OAuthProvider>();
  let providers = initial;
  return {
    update(next) {
      for (const [name, p] of made) {
        if (JSON.stringify(next[name]) !== JSON.stringify(p.config)) made.delete(name);
      }
      providers = next;
    },
    get(name) {
      let p = made.get(name);
      if (!p) {
        const config = providers[name];
        if (!config) throw new ConfigError(`unknown provider "${name}"`);
        p = createProvider(name, config);
        made.set(name, p);
      }
      return p;
    },
  };
}

export function createProvider(name: string, configIn: ProviderConfig): OAuthProvider {
  // A Google provider used only for service accounts may take its client id from the key file.
  const saOnly = !!configIn.service_account_file && !configIn.client_secret && !configIn.private_key_file;
  const config: ProviderConfig = saOnly
    ? {
        ...configIn,
        client_id: configIn.client_id ?? readServiceAccount(configIn.service_account_file as string).clientId,
        // The signed assertion is the credential; there is no client secret to send.
        client_auth: 'none',
      }
    : configIn;
  if (!config.client_id) throw new ConfigError(`providers.${name}: client_id is required`);
  if (!config.issuer && !config.token_endpoint) {
    throw new ConfigError(`providers.${name}: set issuer (discovery) or token_endpoint`);
  }
  const http = [config.issuer, config.token_endpoint].some((u) => u?.startsWith('http:'));
  if (http && !config.allow_insecure_http) {
    throw new ConfigError(`providers.${name}: http:// endpoints need allow_insecure_http: true`);
  }
  const clientAuth = clientAuthFor(name, config);
  let pending: Promise<Configuration> | undefined;
  return {
    name,
    config,
    configuration() {
      if (!pending) {
        pending = build(config, clientAuth);
        // A failed discovery is not cached: the next caller tries again.
        pending.catch(() => {
          pending = undefined;
        });
      }
      return pending;
    },
  };
}

function clientAuthFor(name: string, config: ProviderConfig): ClientAuth {
  switch (config.client_auth) {
    case 'client_secret_basic':
    case 'client_secret_post':
      if (!config.client_secret) {
        throw new ConfigError(`providers.${name}: client_secret is required for ${config.client_auth}`);
      }
      return config.client_auth === 'client_secret_basic'
        ? ClientSecretBasic(config.client_secret)
        : ClientSecretPost(config.client_secret);
    case 'none':
      return None();
    case 'private_key_jwt':
      return privateKeyJwt(name, config);
  }
}

/** RFC 7523 client assertion signed with private_key_file; `x5t` names a Microsoft certificate. */
function privateKeyJwt(name: string, config: ProviderConfig): ClientAuth {
  const where = `providers.${name}.private_key_file`;
  if (!config.private_key_file) throw new ConfigError(`${where} is required for private_key_jwt`);
  let pem: string;
  try {
    pem = readFileSync(config.private_key_file, 'utf8');
  } catch (err) {
    throw new ConfigError(`${where}: cannot read ${config.private_key_file} (${messageOf(err)})`);
  }
  const keyObject = parsePrivateKey(pem, where);
  const header = config.certificate_thumbprint ? { x5t: thumbprintToX5t(config.certificate_thumbprint) } : {};
  let key: Promise<SigningKey> | undefined;
  return async (as, client, body) => {
    key ??= toSigningKey(keyObject, where);
    const now = Math.floor(Date.now() / 1000);
    // The claims openid-client's own PrivateKeyJwt sends: audience is the issuer, valid one minute.
    const assertion = await signJwt(await key, header, {
      iss: client.client_id,
      sub: client.client_id,
      aud: as.issuer,
      jti: randomUUID(),
      iat: now,
      nbf: now,
      exp: now + ASSERTION_LIFETIME_S,
    });
    body.set('client_id', client.client_id);
    body.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
    body.set('client_assertion', assertion);
  };
}

async function build(config: ProviderConfig, clientAuth: ClientAuth): Promise<Configuration> {
  const clientId = config.client_id as string;
  const insecure = config.allow_insecure_http;
  if (config.issuer && !config.token_endpoint) {
    return discovery(new URL(config.issuer), clientId, undefined, clientAuth, {
      execute: insecure ? [allowInsecureRequests] : [],
      timeout: config.timeout_seconds,
      [customFetch]: tokenFetch,
    });
  }
  const tokenEndpoint = config.token_endpoint as string;
  const server: ServerMetadata = {
    issuer: config.issuer ?? new URL(tokenEndpoint).origin,
    token_endpoint: tokenEndpoint,
    authorization_endpoint: config.authorization_endpoint,
    device_authorization_endpoint: config.device_authorization_endpoint,
    revocation_endpoint: config.revocation_endpoint,
  };
  const c = new Configuration(server, clientId, undefined, clientAuth);
  c.timeout = config.timeout_seconds;
  c[customFetch] = tokenFetch;
  if (insecure) allowInsecureRequests(c);
  return c;
}
