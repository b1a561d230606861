import type { AccountRecord } from '../store/types.js';

export type CredentialResult =
  | { ok: true; account: AccountRecord }
  | { ok: false; reason: 'bad_credentials' | 'limited' | 'account_disabled' };

/**
 * Checks a login name and app password. Unknown user and wrong password take the same time
 * and give the same answer; the limiter is applied per login name and per client address.
 */
export interface CredentialChecker {
  verify(login: string, password: string, clientAddress: string): Promise<CredentialResult>;
}
