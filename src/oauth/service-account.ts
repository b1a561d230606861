import { readFileSync } from 'node:fs';
import { ConfigError, messageOf } from '../errors.js';

/** The fields of a Google service-account JSON key the JWT-bearer grant needs. */
export interface ServiceAccountKey {
  clientEmail: string;
  clientId: string | undefined;
  privateKeyPem: string;
  privateKeyId: string | undefined;
  tokenUri: string | undefined;
}

/** Reads and checks a service-account key file; errors name the file, never the key. */
export function readServiceAccount(file: string): ServiceAccountKey {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`service_account_file ${file}: cannot read JSON (${messageOf(err)})`);
  }
  const str = (k: string) =>
    typeof json[k] === 'string' && json[k] !== '' ? (json[k] as string) : undefined;
  const clientEmail = str('client_email');
  const privateKeyPem = str('private_key');
  if (!clientEmail || !privateKeyPem) {
    throw new ConfigError(`service_account_file ${file}: needs client_email and private_key`);
  }
  return {
    clientEmail,
    clientId: str('client_id'),
    privateKeyPem,
    privateKeyId: str('private_key_id'),
    tokenUri: str('token_uri'),
  };
}
