import { readFileSync, statSync } from 'node:fs';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import {
  createSecureContext,
  rootCertificates,
  type SecureContext,
  type TLSSocket,
  connect as tlsConnect,
} from 'node:tls';
import { type FailureDetail, ProxyError } from '../errors.js';
import { DIAL_LIMITS } from './limits.js';

export interface DialOptions {
  host: string;
  port: number;
  /** implicit: TLS from the first byte; starttls: plain TCP now, upgradeTls() after STARTTLS. */
  tls: 'implicit' | 'starttls';
  /** Extra CA bundle (PEM), trusted in addition to the default roots. */
  caFile?: string | undefined;
  /** Name to verify the certificate against (defaults to host). */
  servername?: string | undefined;
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

const KEEPALIVE_MS = 60_000;
const sessions = new Map<string, Buffer>();

// The CA file is part of the key: a session resumed under other trust settings would skip verification.
function sessionKey(o: DialOptions): string {
  return `${o.host}:${o.port}:${o.servername ?? ''}:${o.caFile ?? ''}`;
}

function rememberSession(key: string, session: Buffer): void {
  sessions.delete(key);
  sessions.set(key, session);
  const oldest = sessions.keys().next();
  if (sessions.size > DIAL_LIMITS.tlsSessions && !oldest.done) sessions.delete(oldest.value);
}

const TLS_VERIFY_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REVOKED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Foreign socket/TLS errors → ProxyError('upstream_unavailable') with a bounded detail. */
export function mapDialError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  const code = String((err as NodeJS.ErrnoException | undefined)?.code ?? '');
  let detail: FailureDetail = 'connect_failed';
  if (code === 'ECONNREFUSED') detail = 'connect_refused';
  else if (code === 'ETIMEDOUT') detail = 'connect_timeout';
  else if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH') detail = 'host_unreachable';
  else if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') detail = 'dns_failed';
  else if (code === 'ECONNRESET' || code === 'EPIPE') detail = 'connection_reset';
  else if (TLS_VERIFY_CODES.has(code)) detail = 'tls_verify';
  else if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS')) detail = 'tls_handshake';
  return new ProxyError('upstream_unavailable', `upstream connect failed: ${detail}`, { cause: err, detail });
}

/**
 * Settles a socket-producing attempt exactly once: on `ready`, on error, on timeout or on
 * abort; a loser is destroyed.
 */
function settleOnce<S extends Socket>(
  sock: S,
  readyEvent: 'connect' | 'secureConnect',
  o: DialOptions,
): Promise<S> {
  return new Promise<S>((resolve, reject) => {
    let done = false;
    const finish = (err: ProxyError | undefined) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      sock.off('error', onError);
      sock.off(readyEvent, onReady);
      sock.off('close', onClose);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve(sock);
    };
    const onReady = () => finish(undefined);
    const onError = (e: Error) => finish(mapDialError(e));
    const onClose = () =>
      finish(
        new ProxyError('upstream_unavailable', 'upstream closed during connect', {
          detail: 'connection_reset',
        }),
      );
    const onAbort = () =>
      finish(new ProxyError('timeout', 'upstream connect aborted', { detail: 'aborted' }));
    const timer = setTimeout(
      () =>
        finish(
          new ProxyError('upstream_unavailable', 'upstream connect timed out', { detail: 'connect_timeout' }),
        ),
      o.timeoutMs,
    );
    sock.once(readyEvent, onReady);
    sock.once('error', onError);
    sock.once('close', onClose);
    if (o.signal?.aborted) onAbort();
    else o.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

interface TrustEntry {
  readonly context: SecureContext;
  /** The CA file's modification time and size when it was read (a renewed CA is picked up). */
  readonly stamp: string;
  checkedAt: number;
}

const contexts = new Map<string, TrustEntry>();
/** How often a dial looks whether the operator's CA file changed on disk. */
const CA_RECHECK_MS = 5000;

function unreadableCa(err: unknown): ProxyError {
  return new ProxyError('upstream_unavailable', 'upstream ca_file unreadable', {
    cause: err,
    detail: 'ca_file',
  });
}

function caStamp(caFile: string): string {
  try {
    const st = statSync(caFile);
    return `${st.mtimeMs}:${st.size}`;
  } catch (err) {
    throw unreadableCa(err);
  }
}

/**
 * One SecureContext per CA file: passing `ca` to every tls.connect() re-parses ~140 root
 * certificates per dial (tens of ms of CPU and ~1 MB per session, measured by the bench).
 * The file is looked at again every few seconds and re-read when it changed, so a renewed
 * private CA needs no restart; TLS sessions resumed under the old trust are forgotten.
 */
function trustedContext(caFile: string | undefined, now = Date.now()): SecureContext {
  const k = caFile ?? '';
  const known = contexts.get(k);
  if (known && (!caFile || now - known.checkedAt < CA_RECHECK_MS)) return known.context;
  const stamp = caFile ? caStamp(caFile) : '';
  if (known && known.stamp === stamp) {
    known.checkedAt = now;
    return known.context;
  }
  let ca: string[] | undefined;
  if (caFile) {
    try {
      ca = [...rootCertificates, readFileSync(caFile, 'utf8')];
    } catch (err) {
      throw unreadableCa(err);
    }
    if (known) for (const key of sessions.keys()) if (key.endsWith(`:${caFile}`)) sessions.delete(key);
  }
  const context = createSecureContext({ ...(ca ? { ca } : {}), minVersion: 'TLSv1.2' });
  contexts.set(k, { context, stamp, checkedAt: now });
  return context;
}

function tlsOptions(o: DialOptions) {
  const key = sessionKey(o);
  const name = o.servername ?? o.host;
  return {
    key,
    options: {
      // SNI may not carry an IP address (RFC 6066); the certificate is then checked against the IP.
      servername: isIP(name) ? undefined : name,
      secureContext: trustedContext(o.caFile),
      // Verification is not configurable: an extra CA is the only way to trust a private server.
      rejectUnauthorized: true,
      session: sessions.get(key),
      minVersion: 'TLSv1.2' as const,
    },
  };
}

function secure(s: TLSSocket, key: string): TLSSocket {
  s.on('session', (session: Buffer) => rememberSession(key, session));
  return s;
}

function tune(s: Socket): void {
  s.setNoDelay(true);
  s.setKeepAlive(true, KEEPALIVE_MS);
}

/**
 * The one function that opens a connection to an upstream IMAP server: connect timeout,
 * no-delay, keep-alive, verified TLS with session reuse. For `starttls` it returns the plain
 * socket; call upgradeTls() once the server said OK to STARTTLS.
 */
export async function dial(o: DialOptions): Promise<Socket> {
  if (o.tls === 'starttls') {
    const s = netConnect({ host: o.host, port: o.port });
    tune(s);
    return settleOnce(s, 'connect', o);
  }
  const { key, options } = tlsOptions(o);
  const s = secure(tlsConnect({ host: o.host, port: o.port, ...options }), key);
  tune(s);
  return settleOnce(s, 'secureConnect', o);
}

/** Wraps a plain socket (after the server's OK to STARTTLS) in verified TLS. */
export async function upgradeTls(plain: Socket, o: DialOptions): Promise<TLSSocket> {
  const { key, options } = tlsOptions(o);
  const s = secure(tlsConnect({ socket: plain, ...options }), key);
  return settleOnce(s, 'secureConnect', o);
}
