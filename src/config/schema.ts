import { z } from 'zod';

/**
 * The one source of truth for configuration: TypeScript types, validation and the JSON
 * Schema in config/config.schema.json all come from here. YAML keys are snake_case.
 */

const port = z.number().int().min(0).max(65535);

/** Every protocol the proxy speaks; each has a folder under src/protocols and a registry entry. */
export const PROTOCOL_NAMES = ['imap', 'smtp', 'pop3'] as const;
export type Protocol = (typeof PROTOCOL_NAMES)[number];
const seconds = (def: number) => z.number().positive().default(def);

export const upstreamSchema = z
  .object({
    host: z.string().min(1).describe('Upstream server host name'),
    port: port
      .optional()
      .describe('Upstream port (default by protocol and tls: IMAP 993/143, SMTP 465/587, POP3 995/110)'),
    tls: z.enum(['implicit', 'starttls']).default('implicit').describe('Upstream TLS mode; always verified'),
    ca_file: z.string().optional().describe('Extra CA bundle (PEM) trusted for the upstream certificate'),
    servername: z.string().optional().describe('TLS server name to verify (defaults to host)'),
    mechanism: z
      .enum(['xoauth2', 'oauthbearer', 'auto'])
      .default('auto')
      .describe('SASL mechanism; auto prefers XOAUTH2 when advertised'),
    connect_timeout_seconds: seconds(5).describe('TCP + TLS + greeting (+ STARTTLS and capabilities)'),
    auth_timeout_seconds: seconds(10).describe('The SASL exchange (IMAP AUTHENTICATE, SMTP and POP3 AUTH)'),
    ehlo_name: z
      .string()
      .regex(
        /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,252}))$/,
        'a host name or an [address literal]',
      )
      .optional()
      .describe("SMTP: the name sent in EHLO (default: this machine's host name)"),
    required_scope: z
      .string()
      .min(1)
      .optional()
      .describe(
        'A delegated token must carry this scope for this protocol (checked against the scopes the token endpoint granted); presets fill it',
      ),
    post_login_probe: z
      .boolean()
      .default(false)
      .describe('Send a NOOP after AUTHENTICATE to catch "authenticated but not connected" (Microsoft)'),
  })
  .strict();

export const providerSchema = z
  .object({
    preset: z
      .enum(['oidc', 'microsoft', 'google', 'generic'])
      .default('oidc')
      .describe('Fills endpoints, scopes and upstream'),
    issuer: z.string().url().optional().describe('Issuer URL for OpenID discovery'),
    tenant: z.string().optional().describe('Microsoft tenant id or domain'),
    authorization_endpoint: z.string().url().optional().describe('Explicit endpoint (instead of discovery)'),
    token_endpoint: z.string().url().optional().describe('Explicit endpoint (instead of discovery)'),
    device_authorization_endpoint: z.string().url().optional().describe('RFC 8628 device flow endpoint'),
    revocation_endpoint: z.string().url().optional().describe('RFC 7009 revocation endpoint'),
    client_id: z.string().min(1).optional().describe('OAuth client (application) id'),
    client_secret: z.string().min(1).optional().describe('Client secret; or client_secret_file, or ${ENV}'),
    client_auth: z
      .enum(['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none'])
      .default('client_secret_basic')
      .describe('How the proxy authenticates at the token endpoint'),
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
    smtp_delivery: z
      .enum(['smtp', 'graph'])
      .default('smtp')
      .describe(
        'How SMTP logins send mail: smtp = splice to the upstream SMTP server (AUTH XOAUTH2); graph = the proxy runs the mail transaction and sends each message with Microsoft Graph sendMail (for tenants with SMTP AUTH switched off)',
      ),
    graph_url: z
      .string()
      .url()
      .default('https://graph.microsoft.com')
      .describe(
        'Microsoft Graph base URL (national clouds: https://graph.microsoft.us, https://microsoftgraph.chinacloudapi.cn)',
      ),
    graph_scope: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Delegated scope asked for Graph tokens (Microsoft preset: https://graph.microsoft.com/Mail.Send)',
      ),
    graph_resource: z
      .string()
      .url()
      .optional()
      .describe(
        'RFC 8707 resource indicator sent with Graph token requests (servers that use them; Microsoft does not)',
      ),
    graph_app_only_scope: z
      .string()
      .min(1)
      .optional()
      .describe(
        'Scope for app-only (client-credentials) Graph tokens (Microsoft preset: https://graph.microsoft.com/.default)',
      ),
    graph_save_to_sent_items: z
      .boolean()
      .default(true)
      .describe("Graph delivery: keep a copy of each message in the mailbox's Sent Items"),
    graph_timeout_seconds: seconds(60).describe('Graph delivery: longest one Graph request may take'),
    graph_max_message_bytes: z
      .number()
      .int()
      .min(65536)
      .max(157286400)
      .default(36700160)
      .describe(
        'Graph delivery: largest message accepted (advertised as SIZE; Exchange Online allows 35 MB by default, up to 150 MB when the tenant raises it)',
      ),
    graph_max_recipients: z
      .number()
      .int()
      .min(1)
      .max(500)
      .default(500)
      .describe('Graph delivery: recipients per message (Exchange Online allows 500)'),
    upstream: upstreamSchema
      .partial()
      .optional()
      .describe('Upstream IMAP server (the same as upstreams.imap, kept for existing configs)'),
    upstreams: z
      .object({
        imap: upstreamSchema.partial().optional().describe('Upstream IMAP server; presets fill it in'),
        smtp: upstreamSchema
          .partial()
          .optional()
          .describe('Upstream SMTP submission server; presets fill it in'),
        pop3: upstreamSchema.partial().optional().describe('Upstream POP3 server; presets fill it in'),
      })
      .strict()
      .optional()
      .describe('Upstream server per protocol; presets fill them in'),
  })
  .strict()
  .refine((p) => !(p.upstream && p.upstreams?.imap), {
    message: 'set upstreams.imap or its older spelling upstream, not both',
    path: ['upstream'],
  });

export const listenerSchema = z
  .object({
    name: z
      .string()
      .regex(/^[a-z0-9_-]{1,32}$/, 'use 1-32 of a-z 0-9 _ -')
      .describe('Listener name (logs, metrics)'),
    address: z.string().default('127.0.0.1').describe('Address to bind (0.0.0.0 or :: for all)'),
    protocol: z.enum(PROTOCOL_NAMES).default('imap').describe('Protocol spoken on this listener'),
    port: port.describe('TCP port (0 = any free port)'),
    tls: z
      .enum(['none', 'starttls', 'implicit'])
      .describe('cleartext, cleartext + STARTTLS, or TLS from the first byte'),
    cert_file: z.string().optional().describe('PEM certificate chain; a self-signed one is made if absent'),
    key_file: z.string().optional().describe('PEM private key'),
    allow_cleartext_login: z
      .boolean()
      .default(false)
      .describe('Allow login before STARTTLS or without TLS (needs allow_from; not recommended)'),
    allow_from: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe('Only these client CIDRs may connect; others are closed before the greeting and counted'),
    min_tls_version: z
      .enum(['TLSv1', 'TLSv1.1', 'TLSv1.2', 'TLSv1.3'])
      .default('TLSv1.2')
      .describe(
        'Oldest TLS version accepted; below TLSv1.2 lowers the OpenSSL security level for this listener only (old printers, last resort)',
      ),
    server_name: z
      .string()
      .regex(/^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$/, 'a host name')
      .optional()
      .describe("SMTP: the name in the greeting and EHLO reply (default: this machine's host name)"),
    proxy_protocol: z
      .object({ trusted: z.array(z.string().min(1)).min(1).describe('CIDRs allowed to send a PROXY header') })
      .strict()
      .optional(),
  })
  .strict();

export const WEBHOOK_FORMATS = ['json', 'slack', 'teams', 'ntfy'] as const;
export const NOTIFY_EVENTS = ['grant.needs_consent', 'grant.recovered'] as const;

export const webhookSchema = z
  .object({
    name: z
      .string()
      .regex(/^[a-z0-9_-]{1,32}$/, 'use 1-32 of a-z 0-9 _ -')
      .describe('Webhook name (logs; the URL is never logged, it may hold a token)'),
    url: z
      .string()
      .url()
      .refine((u) => /^https?:\/\//i.test(u), 'an http:// or https:// URL')
      .describe('Where events are POSTed; or url_file, or ${ENV}'),
    format: z
      .enum(WEBHOOK_FORMATS)
      .default('json')
      .describe(
        'Body shape: json (generic), slack ({text}), teams (Adaptive Card), ntfy (plain text + Title)',
      ),
    secret: z
      .string()
      .min(16)
      .optional()
      .describe(
        'HMAC-SHA256 key: X-Signature: sha256=<hex> over "<X-Signature-Timestamp>.<body>"; or secret_file, or ${ENV}',
      ),
    events: z
      .array(z.enum(NOTIFY_EVENTS))
      .min(1)
      .default([...NOTIFY_EVENTS])
      .describe('Events sent to this webhook'),
    headers: z
      .record(z.string().regex(/^[A-Za-z0-9-]{1,64}$/), z.string())
      .optional()
      .describe('Extra request headers (e.g. Authorization for ntfy); never logged'),
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
        level: z
          .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
          .default('info')
          .describe('Log level'),
        format: z
          .enum(['json', 'pretty', 'auto'])
          .default('auto')
          .describe('JSON lines, human-readable, or pretty on a terminal'),
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
        line_bytes: z
          .number()
          .int()
          .min(512)
          .max(65536)
          .default(8192)
          .describe('Longest command line before login'),
        literal_bytes: z
          .number()
          .int()
          .min(512)
          .max(65536)
          .default(8192)
          .describe('Largest literal before login'),
        bad_commands: z
          .number()
          .int()
          .min(1)
          .max(100)
          .default(5)
          .describe('Bad or unknown commands before the connection is closed'),
        preauth_commands: z
          .number()
          .int()
          .min(5)
          .max(10000)
          .default(50)
          .describe('Commands of any kind one connection may send before login, then it is closed'),
        failed_logins_per_connection: z
          .number()
          .int()
          .min(1)
          .max(100)
          .default(3)
          .describe(
            'Failed logins on one connection before it is closed (the limiter still counts across connections)',
          ),
        preauth_idle_seconds: seconds(60).describe('Idle time allowed before login'),
        preauth_lifetime_seconds: seconds(120).describe(
          'Longest a connection may stay connected without logging in, however many commands it sends',
        ),
        preauth_per_address: z
          .number()
          .int()
          .min(1)
          .default(50)
          .describe(
            'Connections not yet logged in from one client address (per process), then told goodbye at once',
          ),
        preauth_total: z
          .number()
          .int()
          .min(1)
          .default(2000)
          .describe(
            'Connections not yet logged in over all addresses (per process), then told goodbye at once',
          ),
        tarpit_seconds: z
          .number()
          .min(0)
          .max(300)
          .default(10)
          .describe(
            'A connection from an address the limiter locked, or past preauth_per_address / preauth_total, is held this long unanswered before it is closed, so a reconnect loop runs at this pace (0 = closed at once)',
          ),
        tarpit_per_address: z
          .number()
          .int()
          .min(1)
          .default(200)
          .describe(
            'Connections held in the tarpit at once from one client address (per process); more are closed at once',
          ),
        tarpit_total: z
          .number()
          .int()
          .min(1)
          .default(2000)
          .describe(
            'Connections held in the tarpit at once over all addresses (per process); more are closed at once',
          ),
        login_timeout_seconds: seconds(30).describe(
          'Longest a login (token + upstream) may take before NO [UNAVAILABLE]',
        ),
        max_sessions_per_account: z
          .number()
          .int()
          .min(1)
          .default(10)
          .describe('Concurrent sessions per account (per process) before NO [LIMIT]'),
        max_connections: z
          .number()
          .int()
          .min(1)
          .default(10000)
          .describe('Open client connections per listener (per process)'),
        warm_upstream_connections: z
          .number()
          .int()
          .min(0)
          .max(16)
          .default(2)
          .describe(
            'Pre-dialled upstream connections kept per upstream server while logins arrive (0 = off)',
          ),
        warm_upstream_idle_seconds: seconds(30).describe(
          'A pre-dialled upstream connection unused this long is closed',
        ),
        shutdown_drain_seconds: z
          .number()
          .min(0)
          .max(3600)
          .default(10)
          .describe(
            'On SIGTERM: how long spliced sessions may go on before they are closed (clients still logging in are told goodbye at once)',
          ),
        graph_inflight_bytes: z
          .number()
          .int()
          .min(1048576)
          .default(536870912)
          .describe(
            'Graph delivery: message bytes held in memory over all sessions (per process); beyond it new messages get 452 4.3.1 and are retried by the client',
          ),
        session_recheck_seconds: seconds(30).describe(
          'How often live sessions are checked against the store: sessions of accounts disabled or removed, or whose grant was revoked or needs consent, are closed',
        ),
      })
      .strict()
      .prefault({}),
    limiter: z
      .object({
        free_failures: z.number().int().min(0).default(3).describe('Failures before delays start'),
        max_failures: z.number().int().min(1).default(10).describe('Failures before [LIMIT] refusals'),
        window_seconds: seconds(900).describe('How long failures are remembered'),
        max_delay_ms: z
          .number()
          .int()
          .min(0)
          .default(4000)
          .describe('Longest delay before answering a suspect login'),
        max_entries: z
          .number()
          .int()
          .min(100)
          .default(100000)
          .describe('Limiter memory bound (tracked logins/addresses)'),
      })
      .strict()
      .prefault({}),
    store: z
      .object({
        driver: z.enum(['sqlite', 'postgres']).default('sqlite').describe('Grant store backend'),
        sqlite_path: z.string().optional().describe('Defaults to <data_dir>/proxy.db'),
        postgres_url: z.string().optional().describe('postgres://… ; or postgres_url_file, or ${ENV}'),
        postgres_pool_size: z
          .number()
          .int()
          .min(1)
          .max(200)
          .default(10)
          .describe(
            'Database connections per proxy process (a refresh holds one while it calls the token endpoint)',
          ),
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
        refresh_before_seconds: z
          .number()
          .int()
          .min(0)
          .default(300)
          .describe('Refresh an access token when this little lifetime is left'),
        refresh_before_fraction: z
          .number()
          .min(0)
          .max(0.9)
          .default(0.1)
          .describe('…or when this fraction of its lifetime is left'),
        cache_entries: z.number().int().min(10).default(100000).describe('Access tokens kept in memory'),
        credential_cache_seconds: seconds(300).describe('How long a verified app password skips scrypt'),
      })
      .strict()
      .prefault({}),
    providers: z.record(z.string().regex(/^[a-z0-9_-]{1,32}$/), providerSchema),
    keepalive: z
      .object({
        enabled: z
          .boolean()
          .default(true)
          .describe(
            'Refresh idle refresh-token grants so the provider does not expire them (Microsoft: 90 days unused)',
          ),
        idle_days: z
          .number()
          .positive()
          .default(14)
          .describe('A grant not refreshed for this long is refreshed by the proxy'),
        per_minute: z
          .number()
          .int()
          .min(1)
          .max(600)
          .default(10)
          .describe('Most keepalive refreshes per minute (per process running them), spaced with jitter'),
        scan_minutes: seconds(60).describe('How often the store is scanned for idle grants'),
      })
      .strict()
      .prefault({})
      .describe('Keepalive refreshes of idle grants (multi-worker: run by one worker)'),
    notifications: z
      .object({
        webhooks: z.array(webhookSchema).default([]).describe('Receivers of grant events'),
        queue_size: z
          .number()
          .int()
          .min(1)
          .max(100000)
          .default(1000)
          .describe('Events waiting per webhook; past it new events are dropped and counted'),
        timeout_seconds: seconds(10).describe('One delivery attempt, connect to response'),
        max_attempts: z
          .number()
          .int()
          .min(1)
          .max(20)
          .default(6)
          .describe(
            'Delivery attempts per event and webhook (5xx, 429, timeouts and network errors are retried)',
          ),
        retry_initial_seconds: seconds(2).describe(
          'First retry delay; doubled each time (jittered, at most 5 minutes)',
        ),
        max_retry_seconds: seconds(900).describe(
          'An event not delivered this long after it was queued is given up',
        ),
      })
      .strict()
      .prefault({})
      .describe('Webhooks told when a grant needs consent and when it recovers'),
    admin: z
      .object({
        address: z.string().default('127.0.0.1').describe('Admin HTTP bind address'),
        port: port.default(9143).describe('Admin HTTP port (/healthz, /readyz, /metrics, onboarding)'),
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
          .describe(
            'Mail server host name /connect shows users for IMAP and SMTP alike (defaults to the public_url host)',
          ),
        allowed_domains: z
          .array(z.string())
          .default([])
          .describe('Mailbox domains /connect accepts (empty = any)'),
        connect_port: port
          .optional()
          .describe(
            'Serve /connect, /connect/start and /oauth/callback on this port only (not on the admin port)',
          ),
        connect_address: z
          .string()
          .optional()
          .describe('Bind address for connect_port (defaults to admin.address)'),
      })
      .strict()
      .refine((a) => a.connect_address === undefined || a.connect_port !== undefined, {
        message: 'admin.connect_address needs admin.connect_port',
        path: ['connect_address'],
      })
      .prefault({}),
  })
  .strict();

export type Config = z.infer<typeof configSchema>;
export type ListenerConfig = z.infer<typeof listenerSchema>;
export type ProviderConfig = z.infer<typeof providerSchema>;
export type UpstreamConfig = z.infer<typeof upstreamSchema>;
export type WebhookConfig = z.infer<typeof webhookSchema>;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

/** Keys whose value may instead be read from a file named by `<key>_file`. */
export const FILE_SECRET_KEYS = [
  'client_secret',
  'postgres_url',
  'metrics_bearer_token',
  'admin_password',
  'secret',
  'url',
];
