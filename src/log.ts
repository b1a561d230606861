import { type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger };

/** Paths that may hold a secret anywhere in a log object; pino replaces them with [Redacted]. */
export const REDACT_PATHS = [
  'password',
  '*.password',
  'token',
  '*.token',
  'accessToken',
  '*.accessToken',
  'access_token',
  '*.access_token',
  'refreshToken',
  '*.refreshToken',
  'refresh_token',
  '*.refresh_token',
  'id_token',
  '*.id_token',
  'clientSecret',
  '*.clientSecret',
  'client_secret',
  '*.client_secret',
  'secret',
  '*.secret',
  'assertion',
  '*.assertion',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'req.headers.authorization',
  'req.headers.cookie',
  'key',
  '*.key',
  'privateKey',
  '*.privateKey',
];

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
