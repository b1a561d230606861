import { createPrivateKey, type KeyObject, webcrypto } from 'node:crypto';
import { ConfigError } from '../errors.js';

/** A PEM private key as a WebCrypto key for RS256 (RSA) or ES256 (P-256) signatures. */
export interface SigningKey {
  alg: 'RS256' | 'ES256';
  key: webcrypto.CryptoKey;
}

/** Parses a PEM key synchronously so a bad file fails at startup, not at the first refresh. */
export function parsePrivateKey(pem: string, where: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new ConfigError(`${where}: not a PEM private key (${(err as Error).message})`);
  }
}

export async function toSigningKey(k: KeyObject, where: string): Promise<SigningKey> {
  const der = k.export({ type: 'pkcs8', format: 'der' });
  if (k.asymmetricKeyType === 'rsa') {
    const key = await webcrypto.subtle.importKey(
      'pkcs8',
      der,
      { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    return { alg: 'RS256', key };
  }
  if (k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1') {
    const key = await webcrypto.subtle.importKey(
      'pkcs8',
      der,
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['sign'],
    );
    return { alg: 'ES256', key };
  }
  throw new ConfigError(`${where}: only RSA and P-256 keys are supported`);
}

/** Azure shows certificate thumbprints as hex SHA-1; the JWT `x5t` header wants base64url. */
export function thumbprintToX5t(thumbprint: string): string {
  const hex = thumbprint.replace(/[:\s]/g, '');
  return /^[0-9a-fA-F]{40}$/.test(hex) ? Buffer.from(hex, 'hex').toString('base64url') : thumbprint;
}
