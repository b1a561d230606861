import { type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger };

/** Paths that may hold a secret anywhere in a log object; pino replaces them with [Redacted]. */
const SECRET_KEYS = [
  'password',
  'token',
  'accessToken',
  'access_token',
  'refreshToken',
  'refresh_token',
  'id_token',
  'clientSecret',
  'client_secret',
  'secret',
  'assertion',
  'authorization',
  'cookie',
  'key',
  'privateKey',
  'private_key',
];

/**
 * Paths that may hold a secret in a log object, at the top level and up to two levels down
 * (e.g. `{ grant: { refresh_token } }`, `{ req: { headers: { authorization } } }`); pino
 * replaces them with [Redacted]. Deeper nesting is caught by the test suites' log scan.
 */
export const REDACT_PATHS = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`]);

export interface LogOptions {
  level?: string;
  /** 'json' (default), 'pretty', or 'auto' (pretty on a TTY). */
  format?: 'json' | 'pretty' | 'auto';
  /** Write to this stream instead of stdout (tests capture logs this way). */
  destination?: NodeJS.WritableStream;
}

/** Child loggers of each root, so a reload's new level reaches the loggers components already hold. */
const families = new WeakMap<Logger, Set<WeakRef<Logger>>>();

export function createLogger(opts: LogOptions = {}): Logger {
  const children = new Set<WeakRef<Logger>>();
  const forget = new FinalizationRegistry<WeakRef<Logger>>((ref) => children.delete(ref));
  const options: LoggerOptions = {
    // Inherited by every child: each one is remembered (weakly) for setLogLevel.
    onChild: (child) => {
      const ref = new WeakRef(child);
      children.add(ref);
      forget.register(child, ref);
    },
    level: opts.level ?? process.env.LOG_LEVEL ?? 'info',
    base: { name: 'imap-oauth-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[Redacted]' },
    serializers: { err: pino.stdSerializers.err },
  };
  const format = opts.format ?? 'auto';
  const pretty =
    format === 'pretty' || (format === 'auto' && !opts.destination && process.stdout.isTTY === true);
  const root = pretty
    ? pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } })
    : opts.destination
      ? pino(options, opts.destination as pino.DestinationStream)
      : pino(options);
  families.set(root, children);
  return root;
}

/** Sets the level of a root logger and of every child made from it that still exists. */
export function setLogLevel(root: Logger, level: string): void {
  root.level = level;
  for (const ref of families.get(root) ?? []) {
    const child = ref.deref();
    if (child) child.level = level;
  }
}

/** A logger that drops everything (library defaults, tests that do not inspect logs). */
export const silentLogger: Logger = pino({ level: 'silent' });
