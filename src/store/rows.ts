import { aadFor, Keyring } from './crypto.js';
import type {
  AccountRecord,
  AccountState,
  AccountStatus,
  AppPasswordRecord,
  GrantRecord,
  GrantStatus,
  UnannouncedGrant,
} from './types.js';

/** Row mapping and field encryption shared by the SQLite and PostgreSQL stores. */

export type Row = Record<string, unknown>;
export type GrantInput = Omit<GrantRecord, 'accountId' | 'updatedAt'>;

/** The grant columns stored encrypted (as `<field>_enc`), each bound to its row and field. */
export const SECRET_FIELDS = ['refresh_token', 'access_token'] as const;
export type SecretField = (typeof SECRET_FIELDS)[number];

export const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));
export const str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v));

export function accountFromRow(row: Row, logins: string[]): AccountRecord {
  const override = str(row.upstream_override);
  return {
    id: Number(row.id),
    logins,
    upstreamUser: String(row.upstream_user),
    provider: String(row.provider),
    status: row.status as AccountStatus,
    maxSessions: num(row.max_sessions),
    upstreamOverride: override === null ? null : (JSON.parse(override) as Record<string, unknown>),
    createdAt: Number(row.created_at),
    lastLoginAt: num(row.last_login_at),
    credentialVersion: Number(row.credential_version),
  };
}

/** The account createAccount just inserted, read back; gone only if deleted in between. */
export function createdAccount(id: number, account: AccountRecord | null): AccountRecord {
  if (!account) throw new Error(`account ${id} was deleted while it was being created`);
  return account;
}

/** Rows of `ACCOUNT_STATES_SQL` (one per existing account) → account id → state. */
export function accountStatesFromRows(rows: readonly Row[]): Map<number, AccountState> {
  const out = new Map<number, AccountState>();
  for (const r of rows) {
    out.set(Number(r.id), {
      accountStatus: r.status as AccountStatus,
      grantStatus: (str(r.grant_status) as GrantStatus | null) ?? null,
    });
  }
  return out;
}

/** Columns and join for accountStates; each store adds its own "id in the list" condition. */
export const ACCOUNT_STATES_SQL =
  'SELECT a.id, a.status, g.status AS grant_status FROM accounts a LEFT JOIN grants g ON g.account_id = a.id';

export function appPasswordFromRow(row: Row): AppPasswordRecord {
  return {
    id: Number(row.id),
    accountId: Number(row.account_id),
    label: String(row.label),
    hash: String(row.hash),
    createdAt: Number(row.created_at),
    lastUsedAt: num(row.last_used_at),
  };
}

export function encryptField(
  keyring: Keyring,
  accountId: number,
  field: SecretField,
  v: string | null,
): string | null {
  return v === null ? null : keyring.encrypt(v, aadFor('grants', accountId, field));
}

export function decryptField(
  keyring: Keyring,
  accountId: number,
  field: SecretField,
  v: unknown,
): string | null {
  return v === null || v === undefined
    ? null
    : keyring.decrypt(String(v), aadFor('grants', accountId, field));
}

export function grantFromRow(keyring: Keyring, accountId: number, row: Row): GrantRecord {
  return {
    accountId,
    kind: row.kind as GrantRecord['kind'],
    status: row.status as GrantStatus,
    refreshToken: decryptField(keyring, accountId, 'refresh_token', row.refresh_token_enc),
    accessToken: decryptField(keyring, accountId, 'access_token', row.access_token_enc),
    accessTokenExpiresAt: num(row.access_token_expires_at),
    scope: str(row.scope),
    lastRefreshAt: num(row.last_refresh_at),
    lastError: str(row.last_error),
    updatedAt: Number(row.updated_at),
  };
}

/**
 * Key rotation for one grant row: every stored value is decrypted (a bad one aborts the whole
 * rotation), values not under the current key are re-encrypted. `values` follows SECRET_FIELDS.
 */
export function reencryptGrantRow(
  keyring: Keyring,
  row: Row,
): { values: (string | null)[]; total: number; rotated: number } {
  const id = Number(row.account_id);
  const values: (string | null)[] = [];
  let total = 0;
  let rotated = 0;
  for (const field of SECRET_FIELDS) {
    const blob = str(row[`${field}_enc`]);
    if (blob === null) {
      values.push(null);
      continue;
    }
    total++;
    const plain = keyring.decrypt(blob, aadFor('grants', id, field));
    if (Keyring.keyIdOf(blob) === keyring.currentId) {
      values.push(blob);
      continue;
    }
    values.push(keyring.encrypt(plain, aadFor('grants', id, field)));
    rotated++;
  }
  return { values, total, rotated };
}

/** Grants whose status differs from the one last announced (both dialects). */
export const UNANNOUNCED_SQL =
  'SELECT g.account_id, g.status, g.last_error, n.status AS announced FROM grants g ' +
  'LEFT JOIN grant_notices n ON n.account_id = g.account_id WHERE n.status IS NULL OR n.status <> g.status';

export function unannouncedFromRow(r: Row): UnannouncedGrant {
  return {
    accountId: Number(r.account_id),
    status: r.status as GrantStatus,
    announced: (str(r.announced) as GrantStatus | null) ?? null,
    lastError: str(r.last_error),
  };
}
