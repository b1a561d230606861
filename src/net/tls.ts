import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { ConfigError, messageOf } from '../errors.js';

export interface TlsPems {
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
}

export type TlsVersion = 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3';

/**
 * Server TLS context for client-facing listeners: TLS 1.2 at least, unless a listener for old
 * devices says otherwise. OpenSSL 3 refuses TLS 1.0/1.1 at its default security level, so such
 * a listener alone runs at level 0 (SHA-1 signatures, old ciphers): a last resort, counted.
 */
export function serverTlsContext(pems: TlsPems, minVersion: TlsVersion = 'TLSv1.2'): SecureContext {
  const legacy = minVersion === 'TLSv1' || minVersion === 'TLSv1.1';
  return createSecureContext({
    cert: pems.cert,
    key: pems.key,
    minVersion,
    ...(legacy ? { ciphers: 'DEFAULT:@SECLEVEL=0' } : {}),
  });
}

/**
 * Reads a listener's cert_file/key_file, or returns the fallback pair (e.g. the generated
 * self-signed one) when the listener names none. Both or neither must be set.
 */
export async function listenerPems(
  cfg: Pick<ListenerConfig, 'name' | 'cert_file' | 'key_file'>,
  fallback: () => { certFile: string; keyFile: string },
): Promise<TlsPems> {
  if ((cfg.cert_file === undefined) !== (cfg.key_file === undefined)) {
    throw new ConfigError(`listener "${cfg.name}": set both cert_file and key_file, or neither`);
  }
  // The fallback pair is asked for only by a listener without files of its own.
  const { certFile, keyFile } =
    cfg.cert_file !== undefined && cfg.key_file !== undefined
      ? { certFile: cfg.cert_file, keyFile: cfg.key_file }
      : fallback();
  try {
    return { cert: await readFile(certFile), key: await readFile(keyFile) };
  } catch (err) {
    throw new ConfigError(`listener "${cfg.name}": cannot read certificate or key (${messageOf(err)})`);
  }
}
