import { createPrivateKey, type KeyObject } from 'node:crypto';
import { type CryptoKey, importPKCS8, type JWTHeaderParameters, type JWTPayload, SignJWT } from 'jose';
import { ConfigError, messageOf } from '../errors.js';

/** A PEM private key imported by jose for RS256 (RSA) or ES256 (P-256) signatures. */
export interface SigningKey {
  alg: 'RS256' | 'ES256';
  key: CryptoKey;
}

/** Parses a PEM key synchronously so a bad file fails at startup, not at the first refresh. */
export function parsePrivateKey(pem: string, where: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new ConfigError(`${where}: not a PEM private key (${messageOf(err)})`);
  }
}

export async function toSigningKey(k: KeyObject, where: string): Promise<SigningKey> {
  const alg = algorithmOf(k);
  if (!alg) throw new ConfigError(`${where}: only RSA and P-256 keys are supported`);
  // Any PEM flavour Node reads (PKCS#1, SEC1, PKCS#8) reaches jose as PKCS#8.
  const pem = k.export({ type: 'pkcs8', format: 'pem' }).toString();
  return { alg, key: await importPKCS8(pem, alg) };
}

function algorithmOf(k: KeyObject): SigningKey['alg'] | undefined {
  if (k.asymmetricKeyType === 'rsa') return 'RS256';
  if (k.asymmetricKeyType === 'ec' && k.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  return undefined;
}

/** A compact JWS over `claims`; `alg` always comes from the key. */
export function signJwt(
  key: SigningKey,
  header: Omit<JWTHeaderParameters, 'alg'>,
  claims: JWTPayload,
): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ ...header, alg: key.alg }).sign(key.key);
}

/** Azure shows certificate thumbprints as hex SHA-1; the JWT `x5t` header wants base64url. */
export function thumbprintToX5t(thumbprint: string): string {
  const hex = thumbprint.replace(/[:\s]/g, '');
  return /^[0-9a-fA-F]{40}$/.test(hex) ? Buffer.from(hex, 'hex').toString('base64url') : thumbprint;
}
