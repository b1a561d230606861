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

export function createLogger(opts: LogOptions = {}): Logger {
  const options: LoggerOptions = {
    level: opts.level ?? process.env.LOG_LEVEL ?? 'info',
    base: { name: 'imap-oauth-proxy' },
    redact: { paths: REDACT_PATHS, censor: '[Redacted]' },
    serializers: { err: pino.stdSerializers.err },
  };
  const format = opts.format ?? 'auto';
  const pretty =
    format === 'pretty' || (format === 'auto' && !opts.destination && process.stdout.isTTY === true);
  if (pretty) {
    return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
  }
  if (opts.destination) return pino(options, opts.destination as pino.DestinationStream);
  return pino(options);
}

/** A logger that drops everything (library defaults, tests that do not inspect logs). */
export const silentLogger: Logger = pino({ level: 'silent' });
