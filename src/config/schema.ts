import { z } from 'zod';

/**
 * The one source of truth for configuration: TypeScript types, validation and the JSON
 * Schema in config/config.schema.json all come from here. YAML keys are snake_case.
 */

const port = z.number().int().min(0).max(65535);
const seconds = (def: number) => z.number().positive().default(def);

export const upstreamSchema = z
  .object({
    host: z.string().min(1).describe('Upstream IMAP host name'),
    port: port.default(993),
    tls: z.enum(['implicit', 'starttls']).default('implicit').describe('Upstream TLS mode; always verified'),
    ca_file: z.string().optional().describe('Extra CA bundle (PEM) trusted for the upstream certificate'),
    servername: z.string().optional().describe('TLS server name to verify (defaults to host)'),
    mechanism: z.enum(['xoauth2', 'oauthbearer', 'auto']).default('auto'),
    connect_timeout_seconds: seconds(10),
    auth_timeout_seconds: seconds(20),
    post_login_probe: z
      .boolean()
      .default(false)
      .describe('Send a NOOP after AUTHENTICATE to catch "authenticated but not connected" (Microsoft)'),
  })
  .strict();

export const providerSchema = z
  .object({
    preset: z.enum(['oidc', 'microsoft', 'google', 'generic']).default('oidc'),
    issuer: z.string().url().optional().describe('Issuer URL for OpenID discovery'),
    tenant: z.string().optional().describe('Microsoft tenant id or domain'),
    authorization_endpoint: z.string().url().optional(),
    token_endpoint: z.string().url().optional(),
    device_authorization_endpoint: z.string().url().optional(),
    revocation_endpoint: z.string().url().optional(),
    client_id: z.string().min(1).optional(),
    client_secret: z.string().min(1).optional().describe('Client secret; or client_secret_file, or ${ENV}'),
    client_auth: z
      .enum(['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'])
      .default('client_secret_basic'),
    private_key_file: z.string().optional().describe('PEM key for private_key_jwt client authentication'),
    certificate_thumbprint: z
      .string()
      .optional()
      .describe('x5t for private_key_jwt (Microsoft certificates)'),
    service_account_file: z
      .string()
      .optional()
      .describe('Google service-account JSON key (domain-wide delegation)'),
    scopes: z.array(z.string().min(1)).optional().describe('Delegated scopes'),
    app_only_scope: z.string().optional().describe('Scope for client-credentials (app-only) grants'),
    timeout_seconds: seconds(10).describe('Token endpoint timeout'),
    allow_insecure_http: z
      .boolean()
      .default(false)
      .describe('Allow http:// OAuth endpoints (local testing only)'),
    upstream: upstreamSchema.partial().optional().describe('Upstream IMAP server; presets fill it in'),
  })
  .strict();

export const listenerSchema = z
  .object({
    name: z.string().regex(/^[a-z0-9_-]{1,32}$/, 'use 1-32 of a-z 0-9 _ -'),
    address: z.string().default('127.0.0.1'),
    port,
    tls: z.enum(['none', 'starttls', 'implicit']),
    cert_file: z.string().optional().describe('PEM certificate chain; a self-signed one is made if absent'),
    key_file: z.string().optional().describe('PEM private key'),
    allow_cleartext_login: z
      .boolean()
      .default(false)
      .describe('Allow LOGIN before STARTTLS (not recommended)'),
    proxy_protocol: z
      .object({ trusted: z.array(z.string().min(1)).min(1).describe('CIDRs allowed to send a PROXY header') })
      .strict()
      .optional(),
  })
  .strict();

export const configSchema = z
  .object({
    data_dir: z
      .string()
      .default('./data')
      .describe('Where the SQLite store, keys and generated certificates live'),
    log: z
      .object({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
        format: z.enum(['json', 'pretty', 'auto']).default('auto'),
      })
      .strict()
      .prefault({}),
    workers: z
      .union([z.number().int().min(1).max(64), z.literal('auto')])
      .default(1)
      .describe('Worker processes sharing the listeners ("auto" = one per CPU); each holds its own caches'),
    listeners: z.array(listenerSchema).min(1),
    limits: z
      .object({
        line_bytes: z.number().int().min(512).max(65536).default(8192),
        literal_bytes: z.number().int().min(512).max(65536).default(8192),
        bad_commands: z.number().int().min(1).max(100).default(5),
        preauth_idle_seconds: seconds(60),
        login_timeout_seconds: seconds(30),
        max_sessions_per_account: z.number().int().min(1).default(10),
        max_connections: z.number().int().min(1).default(10000),
      })
      .strict()
      .prefault({}),
    limiter: z
      .object({
        free_failures: z.number().int().min(0).default(3).describe('Failures before delays start'),
        max_failures: z.number().int().min(1).default(10).describe('Failures before [LIMIT] refusals'),
        window_seconds: seconds(900),
        max_delay_ms: z.number().int().min(0).default(4000),
        max_entries: z.number().int().min(100).default(100000),
      })
      .strict()
      .prefault({}),
    store: z
      .object({
        driver: z.enum(['sqlite', 'postgres']).default('sqlite'),
        sqlite_path: z.string().optional().describe('Defaults to <data_dir>/proxy.db'),
        postgres_url: z.string().optional().describe('postgres://… ; or postgres_url_file, or ${ENV}'),
      })
      .strict()
      .prefault({}),
    encryption: z
      .object({
        key: z.string().optional().describe('Master key "<id>:<base64 32 bytes>"; use ${ENV}'),
        key_file: z
          .string()
          .optional()
          .describe('File with master keys, one "<id>:<base64>" per line, first is current'),
        create_key_file: z
          .boolean()
          .default(false)
          .describe('Create key_file on first start (quick start only)'),
      })
      .strict()
      .prefault({}),
    tokens: z
      .object({
        refresh_before_seconds: z.number().int().min(0).default(300),
        refresh_before_fraction: z.number().min(0).max(0.9).default(0.1),
        cache_entries: z.number().int().min(10).default(100000),
        credential_cache_seconds: seconds(300),
      })
      .strict()
      .prefault({}),
    providers: z.record(z.string().regex(/^[a-z0-9_-]{1,32}$/), providerSchema),
    admin: z
      .object({
        address: z.string().default('127.0.0.1'),
        port: port.default(9143),
        public_url: z
          .string()
          .url()
          .optional()
          .describe('Base URL users reach for /connect and the OAuth callback'),
        metrics_bearer_token: z.string().optional().describe('Require this bearer token on /metrics'),
        admin_password: z.string().optional().describe('Basic-auth password for /status (user "admin")'),
        connect_page: z.boolean().default(false).describe('Serve the self-service /connect page'),
        imap_host: z
          .string()
          .optional()
          .describe('IMAP server name /connect shows users (defaults to the public_url host)'),
        allowed_domains: z
          .array(z.string())
          .default([])
          .describe('Mailbox domains /connect accepts (empty = any)'),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type ListenerConfig = z.infer<typeof listenerSchema>;
export type ProviderConfig = z.infer<typeof providerSchema>;
export type UpstreamConfig = z.infer<typeof upstreamSchema>;

/** Keys whose value may instead be read from a file named by `<key>_file`. */
export const FILE_SECRET_KEYS = ['client_secret', 'postgres_url', 'metrics_bearer_token', 'admin_password'];
