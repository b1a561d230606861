/**
 * The grant store: accounts, app passwords, encrypted grants, audit. Async throughout so
 * SQLite (embedded default) and PostgreSQL (several proxy instances) share one interface.
 * Values returned here are already decrypted; implementations encrypt at rest.
 */

export type AccountStatus = 'active' | 'disabled';
export type GrantKind = 'refresh_token' | 'client_credentials' | 'jwt_bearer';
export type GrantStatus = 'active' | 'needs_consent' | 'error';

export interface AccountRecord {
  id: number;
  /** Login names the legacy client may type (first is the primary). Stored lower-cased. */
  logins: string[];
  /** Mailbox address sent upstream as XOAUTH2 `user=`. */
  upstreamUser: string;
  /** Key into config `providers`. */
  provider: string;
  status: AccountStatus;
  /** Per-account concurrent session cap; null = config default. */
  maxSessions: number | null;
  /** Optional per-account upstream override (JSON object, same keys as config upstream). */
  upstreamOverride: Record<string, unknown> | null;
  createdAt: number;
  lastLoginAt: number | null;
  /**
   * Bumped whenever the account's credentials or status change (password added or revoked,
   * disabled, enabled), so a verified-credential cache can notice with one cheap read.
   * Optional so hand-built records (tests, fakes) stay valid.
   */
  credentialVersion?: number;
}

export interface NewAccount {
  login: string;
  upstreamUser: string;
  provider: string;
  maxSessions?: number | null;
  upstreamOverride?: Record<string, unknown> | null;
}

export interface AppPasswordRecord {
  id: number;
  accountId: number;
  label: string;
  /** Encoded scrypt hash with its parameters, e.g. `scrypt$N=16384,r=8,p=1$<salt b64>$<hash b64>`. */
  hash: string;
  createdAt: number;
  lastUsedAt: number | null;
}

export interface GrantRecord {
  accountId: number;
  kind: GrantKind;
  status: GrantStatus;
  refreshToken: string | null;
  accessToken: string | null;
  /** Epoch milliseconds. */
  accessTokenExpiresAt: number | null;
  scope: string | null;
  lastRefreshAt: number | null;
  lastError: string | null;
  updatedAt: number;
}

export type GrantPatch = Partial<Omit<GrantRecord, 'accountId' | 'updatedAt'>>;

export interface AuditEvent {
  at: number;
  actor: string;
  action: string;
  accountId: number | null;
  detail: string | null;
}

export interface AccountState {
  accountStatus: AccountStatus;
  /** null: the account has no grant. */
  grantStatus: GrantStatus | null;
}

export interface UnannouncedGrant {
  accountId: number;
  status: GrantStatus;
  announced: GrantStatus | null;
  lastError: string | null;
}

/** Handle passed to `withGrantLock`: reads and writes inside the same transaction/lock. */
export interface GrantTx {
  get(): Promise<GrantRecord | null>;
  update(patch: GrantPatch): Promise<void>;
  /**
   * Makes a rotated refresh token durable at once, ahead of the pending writes: the server has
   * already consumed the old one, so a crash before the end of the lock must not lose it.
   * Synchronous where the store allows (SQLite); it keeps the lock.
   */
  commitRefreshToken?(refreshToken: string): void | Promise<void>;
}

export interface GrantStore extends KeyRotatable {
  /** Apply pending migrations; safe to call at every start. */
  migrate(): Promise<void>;
  /** Throws if the store is unreachable (used by /readyz). */
  ping(): Promise<void>;
  close(): Promise<void>;

  createAccount(input: NewAccount, actor: string): Promise<AccountRecord>;
  getAccount(id: number): Promise<AccountRecord | null>;
  /** Case-insensitive lookup by any login name. */
  getAccountByLogin(login: string): Promise<AccountRecord | null>;
  listAccounts(): Promise<AccountRecord[]>;
  setAccountStatus(id: number, status: AccountStatus, actor: string): Promise<void>;
  addLogin(id: number, login: string, actor: string): Promise<void>;
  deleteAccount(id: number, actor: string): Promise<void>;
  recordLogin(id: number, at: number): Promise<void>;

  addAppPassword(accountId: number, label: string, hash: string, actor: string): Promise<AppPasswordRecord>;
  listAppPasswords(accountId: number): Promise<AppPasswordRecord[]>;
  /** Revoke by label or numeric id; returns false when nothing matched. */
  revokeAppPassword(accountId: number, labelOrId: string, actor: string): Promise<boolean>;
  touchAppPassword(id: number, at: number): Promise<void>;

  getGrant(accountId: number): Promise<GrantRecord | null>;
  /** Create or replace the account's grant (import, onboarding). */
  putGrant(
    accountId: number,
    grant: Omit<GrantRecord, 'accountId' | 'updatedAt'>,
    actor: string,
  ): Promise<void>;
  deleteGrant(accountId: number, actor: string): Promise<void>;
  /**
   * Run `fn` holding the grant's lock (a process mutex plus BEGIN IMMEDIATE on SQLite,
   * SELECT … FOR UPDATE on PostgreSQL), so one refresh runs at a time across instances.
   * Writes through `tx` commit when `fn` resolves and roll back if it throws.
   */
  withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T>;
  countGrantsByStatus(): Promise<Record<GrantStatus, number>>;
  /**
   * Account and grant status of several accounts in one read (the live-session recheck).
   * An id missing from the answer has no account any more.
   */
  accountStates(ids: readonly number[]): Promise<Map<number, AccountState>>;

  /** The grant status last announced for this account (null: none yet). */
  grantNotice(accountId: number): Promise<GrantStatus | null>;
  /**
   * Records `to` as the announced status if the announced status is still `from` (null: no
   * record yet). True for exactly one of several processes racing on the same change.
   */
  claimGrantNotice(accountId: number, from: GrantStatus | null, to: GrantStatus): Promise<boolean>;
  /** Grants whose status differs from the one last announced (announced null: never recorded). */
  unannouncedGrants(): Promise<UnannouncedGrant[]>;

  audit(actor: string, action: string, accountId: number | null, detail?: string): Promise<void>;
  listAudit(accountId?: number, limit?: number): Promise<AuditEvent[]>;
}

/** Result of re-encrypting every stored secret with the current key (`key rotate`). */
export interface RotationResult {
  /** Encrypted values seen. */
  total: number;
  /** Values that were under an older key and were re-encrypted. */
  rotated: number;
}

/** Stores that can re-encrypt their secrets in one transaction. */
export interface KeyRotatable {
  reencryptAll(actor?: string): Promise<RotationResult>;
}
