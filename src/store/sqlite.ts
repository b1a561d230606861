import { randomUUID } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { ConfigError, messageOf } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Keyring } from './crypto.js';
import { normalizeLogin } from './login.js';
import { MIGRATIONS } from './migrations.js';
import { KeyedMutex } from './mutex.js';
import {
  ACCOUNT_STATES_SQL,
  accountFromRow,
  accountStatesFromRows,
  appPasswordFromRow,
  createdAccount,
  encryptField,
  type GrantInput,
  grantFromRow,
  num,
  type Row,
  reencryptGrantRow,
  str,
  UNANNOUNCED_SQL,
  unannouncedFromRow,
} from './rows.js';
import type {
  AccountRecord,
  AccountState,
  AccountStatus,
  AppPasswordRecord,
  AuditEvent,
  GrantPatch,
  GrantRecord,
  GrantStatus,
  GrantStore,
  GrantTx,
  KeyRotatable,
  NewAccount,
  RotationResult,
  UnannouncedGrant,
} from './types.js';

/** A holder renews its lease every LOCK_RENEW_MS; a holder on another host that stops renewing loses it. */
const LOCK_LEASE_MS = 15_000;
const LOCK_RENEW_MS = 5_000;
const LOCK_WAIT_MS = 60_000;
const HOST = hostname();
/** Lease owners of this process's open stores: another owner naming this pid is a previous process. */
const LIVE_OWNERS = new Set<string>();

/** Whether the lease owner `host:pid:uuid` can no longer be running (checked only on this host). */
function ownerIsGone(owner: string): boolean {
  const [host, pidText, id] = owner.split(':');
  const pid = Number(pidText);
  if (host !== HOST || !Number.isInteger(pid) || pid <= 0 || id === undefined) return false;
  if (pid === process.pid) return !LIVE_OWNERS.has(owner);
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    // EPERM: the pid is alive under another user.
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * GrantStore on better-sqlite3 (WAL, busy_timeout, versioned migrations). Calls are
 * synchronous underneath and wrapped in promises to keep the interface shared with PostgreSQL.
 */
export class SqliteGrantStore implements GrantStore, KeyRotatable {
  readonly #database: Database.Database;
  readonly #keyring: Keyring;
  readonly #log: Logger;
  readonly #mutex = new KeyedMutex<number>();
  readonly #owner = `${HOST}:${process.pid}:${randomUUID()}`;
  /** withGrantLock calls holding or waiting for a lock: close() waits for them. */
  #lockers = 0;
  #lockersDone: (() => void) | undefined;
  #closing = false;
  /** Prepared statements by SQL text: logins run the same few queries, so prepare each once. */
  readonly #statements = new Map<string, Database.Statement>();

  private constructor(db: Database.Database, keyring: Keyring, log: Logger) {
    this.#database = db;
    LIVE_OWNERS.add(this.#owner);
    this.#keyring = keyring;
    this.#log = log;
  }

  /** The connection; after close() a clear error instead of better-sqlite3's "not open". */
  get #db(): Database.Database {
    if (!this.#database.open) throw new Error('grant store is closed');
    return this.#database;
  }

  #sql(sql: string): Database.Statement {
    const db = this.#db;
    let st = this.#statements.get(sql);
    if (!st) {
      st = db.prepare(sql);
      this.#statements.set(sql, st);
    }
    return st;
  }

  /** Opens (creating 0600 if needed) and migrates the store at `path` (':memory:' for tests). */
  static async open(path: string, keyring: Keyring, log: Logger = silentLogger): Promise<SqliteGrantStore> {
    if (path !== ':memory:') {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      // Create the file ourselves so it (and the -wal/-shm files SQLite derives from it) are 0600.
      if (!existsSync(path)) closeSync(openSync(path, 'a', 0o600));
      chmodSync(path, 0o600);
    }
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (cause) {
      throw new ConfigError(`cannot open SQLite store ${path}: ${messageOf(cause)}`, { cause });
    }
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    db.pragma('foreign_keys = ON');
    db.pragma('synchronous = NORMAL');
    const store = new SqliteGrantStore(db, keyring, log);
    await store.migrate();
    return store;
  }

  async migrate(): Promise<void> {
    this.#db.exec(
      'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
    );
    const done = new Set(
      (this.#sql('SELECT version FROM schema_migrations').all() as Row[]).map((r) => Number(r.version)),
    );
    for (const m of MIGRATIONS) {
      if (done.has(m.version)) continue;
      this.#db
        .transaction(() => {
          this.#db.exec(m.sqlite);
          this.#sql('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
            m.version,
            m.name,
            Date.now(),
          );
        })
        .immediate();
      this.#log.info({ version: m.version, migration: m.name }, 'store migration applied');
    }
  }

  async ping(): Promise<void> {
    this.#sql('SELECT 1').get();
  }

  /** Lock waiters fail with "grant store is closing"; holders finish (and commit) before the DB closes. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#lockers > 0) await new Promise<void>((r) => (this.#lockersDone = r));
    LIVE_OWNERS.delete(this.#owner);
    if (this.#database.open) this.#database.close();
  }

  #checkOpen(): void {
    if (this.#closing) throw new Error('grant store is closing');
  }

  // ---- accounts ------------------------------------------------------------------------

  #account(row: Row): AccountRecord {
    const id = Number(row.id);
    const logins = (
      this.#sql('SELECT login FROM account_logins WHERE account_id = ? ORDER BY position').all(id) as Row[]
    ).map((r) => String(r.login));
    return accountFromRow(row, logins);
  }

  #auditSync(actor: string, action: string, accountId: number | null, detail?: string): void {
    this.#sql('INSERT INTO audit (at, actor, action, account_id, detail) VALUES (?, ?, ?, ?, ?)').run(
      Date.now(),
      actor,
      action,
      accountId,
      detail ?? null,
    );
    // Mirrored to the log so account and grant changes reach the admin's log pipeline too.
    this.#log.info({ audit: { actor, action, accountId, detail: detail ?? null } }, `audit: ${action}`);
  }

  #bumpVersion(id: number): void {
    this.#sql('UPDATE accounts SET credential_version = credential_version + 1 WHERE id = ?').run(id);
  }

  #insertLogin(id: number, login: string): void {
    const l = normalizeLogin(login);
    if (l === '') throw new ConfigError('login name must not be empty');
    const taken = this.#sql('SELECT account_id FROM account_logins WHERE login = ?').get(l);
    if (taken) throw new ConfigError(`login "${l}" is already in use`);
    const pos = this.#sql(
      'SELECT COALESCE(MAX(position), -1) + 1 AS p FROM account_logins WHERE account_id = ?',
    ).get(id) as Row;
    this.#sql('INSERT INTO account_logins (login, account_id, position) VALUES (?, ?, ?)').run(l, id, pos.p);
  }

  async createAccount(input: NewAccount, actor: string): Promise<AccountRecord> {
    const id = this.#db
      .transaction(() => {
        const r = this.#sql(
          'INSERT INTO accounts (upstream_user, provider, status, max_sessions, upstream_override, created_at) VALUES (?, ?, ?, ?, ?, ?)',
        ).run(
          input.upstreamUser,
          input.provider,
          'active',
          input.maxSessions ?? null,
          input.upstreamOverride ? JSON.stringify(input.upstreamOverride) : null,
          Date.now(),
        );
        const newId = Number(r.lastInsertRowid);
        this.#insertLogin(newId, input.login);
        this.#auditSync(actor, 'account.create', newId, `provider=${input.provider}`);
        return newId;
      })
      .immediate();
    return createdAccount(id, await this.getAccount(id));
  }

  async getAccount(id: number): Promise<AccountRecord | null> {
    const row = this.#sql('SELECT * FROM accounts WHERE id = ?').get(id) as Row | undefined;
    return row ? this.#account(row) : null;
  }

  async getAccountByLogin(login: string): Promise<AccountRecord | null> {
    const row = this.#sql(
      'SELECT a.* FROM accounts a JOIN account_logins l ON l.account_id = a.id WHERE l.login = ?',
    ).get(normalizeLogin(login)) as Row | undefined;
    return row ? this.#account(row) : null;
  }

  async listAccounts(): Promise<AccountRecord[]> {
    const rows = this.#sql('SELECT * FROM accounts ORDER BY id').all() as Row[];
    return rows.map((r) => this.#account(r));
  }

  #requireAccount(id: number): void {
    if (!this.#sql('SELECT 1 FROM accounts WHERE id = ?').get(id)) {
      throw new ConfigError(`no account with id ${id}`);
    }
  }

  async setAccountStatus(id: number, status: AccountStatus, actor: string): Promise<void> {
    this.#db
      .transaction(() => {
        this.#requireAccount(id);
        this.#sql('UPDATE accounts SET status = ? WHERE id = ?').run(status, id);
        this.#bumpVersion(id);
        this.#auditSync(actor, `account.${status === 'active' ? 'enable' : 'disable'}`, id);
      })
      .immediate();
  }

  async addLogin(id: number, login: string, actor: string): Promise<void> {
    this.#db
      .transaction(() => {
        this.#requireAccount(id);
        this.#insertLogin(id, login);
        this.#auditSync(actor, 'account.alias_add', id, `login=${normalizeLogin(login)}`);
      })
      .immediate();
  }

  async deleteAccount(id: number, actor: string): Promise<void> {
    this.#db
      .transaction(() => {
        this.#requireAccount(id);
        this.#sql('DELETE FROM accounts WHERE id = ?').run(id);
        this.#sql('DELETE FROM grant_locks WHERE account_id = ?').run(id);
        this.#auditSync(actor, 'account.remove', id);
      })
      .immediate();
  }

  async recordLogin(id: number, at: number): Promise<void> {
    this.#sql('UPDATE accounts SET last_login_at = ? WHERE id = ?').run(at, id);
  }

  // ---- app passwords -------------------------------------------------------------------

  async addAppPassword(
    accountId: number,
    label: string,
    hash: string,
    actor: string,
  ): Promise<AppPasswordRecord> {
    const id = this.#db
      .transaction(() => {
        this.#requireAccount(accountId);
        const dup = this.#sql('SELECT 1 FROM app_passwords WHERE account_id = ? AND label = ?').get(
          accountId,
          label,
        );
        if (dup) throw new ConfigError(`app password label "${label}" already exists for this account`);
        const r = this.#sql(
          'INSERT INTO app_passwords (account_id, label, hash, created_at) VALUES (?, ?, ?, ?)',
        ).run(accountId, label, hash, Date.now());
        this.#bumpVersion(accountId);
        this.#auditSync(actor, 'password.add', accountId, `label=${label}`);
        return Number(r.lastInsertRowid);
      })
      .immediate();
    return appPasswordFromRow(this.#sql('SELECT * FROM app_passwords WHERE id = ?').get(id) as Row);
  }

  async listAppPasswords(accountId: number): Promise<AppPasswordRecord[]> {
    const rows = this.#sql('SELECT * FROM app_passwords WHERE account_id = ? ORDER BY id').all(accountId);
    return (rows as Row[]).map((r) => appPasswordFromRow(r));
  }

  async revokeAppPassword(accountId: number, labelOrId: string, actor: string): Promise<boolean> {
    return this.#db
      .transaction(() => {
        const byLabel = this.#sql(
          'SELECT id, label FROM app_passwords WHERE account_id = ? AND label = ?',
        ).get(accountId, labelOrId) as Row | undefined;
        const row =
          byLabel ??
          (/^\d+$/.test(labelOrId)
            ? (this.#sql('SELECT id, label FROM app_passwords WHERE account_id = ? AND id = ?').get(
                accountId,
                Number(labelOrId),
              ) as Row | undefined)
            : undefined);
        if (!row) return false;
        this.#sql('DELETE FROM app_passwords WHERE id = ?').run(row.id);
        this.#bumpVersion(accountId);
        this.#auditSync(actor, 'password.revoke', accountId, `label=${String(row.label)}`);
        return true;
      })
      .immediate();
  }

  async touchAppPassword(id: number, at: number): Promise<void> {
    this.#sql('UPDATE app_passwords SET last_used_at = ? WHERE id = ?').run(at, id);
  }

  // ---- grants --------------------------------------------------------------------------

  #readGrant(accountId: number): GrantRecord | null {
    const row = this.#sql('SELECT * FROM grants WHERE account_id = ?').get(accountId) as Row | undefined;
    if (!row) return null;
    return grantFromRow(this.#keyring, accountId, row);
  }

  #writeGrant(accountId: number, g: GrantInput): void {
    this.#sql(
      `INSERT INTO grants (account_id, kind, status, refresh_token_enc, access_token_enc, access_token_expires_at,
           scope, last_refresh_at, last_error, updated_at)
         VALUES (@id, @kind, @status, @rt, @at, @exp, @scope, @lr, @le, @now)
         ON CONFLICT (account_id) DO UPDATE SET kind = @kind, status = @status, refresh_token_enc = @rt,
           access_token_enc = @at, access_token_expires_at = @exp, scope = @scope, last_refresh_at = @lr,
           last_error = @le, updated_at = @now`,
    ).run({
      id: accountId,
      kind: g.kind,
      status: g.status,
      rt: encryptField(this.#keyring, accountId, 'refresh_token', g.refreshToken),
      at: encryptField(this.#keyring, accountId, 'access_token', g.accessToken),
      exp: g.accessTokenExpiresAt,
      scope: g.scope,
      lr: g.lastRefreshAt,
      le: g.lastError,
      now: Date.now(),
    });
  }

  async getGrant(accountId: number): Promise<GrantRecord | null> {
    return this.#readGrant(accountId);
  }

  async putGrant(accountId: number, grant: GrantInput, actor: string): Promise<void> {
    this.#db
      .transaction(() => {
        this.#requireAccount(accountId);
        this.#writeGrant(accountId, grant);
        this.#auditSync(actor, 'grant.put', accountId, `kind=${grant.kind} status=${grant.status}`);
      })
      .immediate();
  }

  async deleteGrant(accountId: number, actor: string): Promise<void> {
    this.#db
      .transaction(() => {
        this.#sql('DELETE FROM grants WHERE account_id = ?').run(accountId);
        this.#auditSync(actor, 'grant.delete', accountId);
      })
      .immediate();
  }

  /**
   * A SQLite write transaction cannot stay open across the network call a refresh makes: one
   * connection serves every request of this process (their statements would join it) and
   * other processes would stall in busy_timeout. So the lock is a process mutex plus a lease
   * row (`grant_locks`, taken and released in short BEGIN IMMEDIATE transactions, renewed while
   * held; a waiter takes it over once it expires or, on this host, once the holder's pid is
   * gone), and `tx.update` writes are buffered and committed in one BEGIN IMMEDIATE
   * transaction when `fn` resolves — or dropped when it throws; `tx.commitRefreshToken`
   * writes at once. `tx.get` reads the committed
   * row merged with this holder's pending writes, so a waiter sees the winner's fresh token.
   */
  async withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    this.#checkOpen();
    this.#lockers++;
    try {
      return await this.#mutex.run(accountId, () => this.#locked(accountId, fn));
    } finally {
      if (--this.#lockers === 0) this.#lockersDone?.();
    }
  }

  async #locked<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    this.#checkOpen();
    await this.#acquireLease(accountId);
    // Renewed while held, so a live holder keeps a short lease and a dead one loses it soon.
    const renew = setInterval(() => {
      try {
        this.#sql('UPDATE grant_locks SET expires_at = ? WHERE account_id = ? AND owner = ?').run(
          Date.now() + LOCK_LEASE_MS,
          accountId,
          this.#owner,
        );
      } catch (err) {
        this.#log.warn({ accountId, err: messageOf(err) }, 'grant lease renewal failed');
      }
    }, LOCK_RENEW_MS);
    renew.unref();
    let pending: GrantPatch | null = null;
    const tx: GrantTx = {
      get: async () => {
        const g = this.#readGrant(accountId);
        return g && pending ? { ...g, ...pending } : g;
      },
      update: async (patch) => {
        pending = { ...(pending ?? {}), ...patch };
      },
      // One synchronous autocommit UPDATE: durable before the caller's next statement runs.
      commitRefreshToken: (refreshToken) => {
        this.#sql('UPDATE grants SET refresh_token_enc = ?, updated_at = ? WHERE account_id = ?').run(
          encryptField(this.#keyring, accountId, 'refresh_token', refreshToken),
          Date.now(),
          accountId,
        );
      },
    };
    try {
      const result = await fn(tx);
      this.#db
        .transaction(() => {
          const patch = pending as GrantPatch | null;
          if (patch) {
            const cur = this.#readGrant(accountId);
            if (!cur) throw new Error(`grant for account ${accountId} vanished during update`);
            const { accountId: _a, updatedAt: _u, ...base } = cur;
            this.#writeGrant(accountId, { ...base, ...patch });
          }
          this.#releaseLeaseSync(accountId);
        })
        .immediate();
      return result;
    } catch (err) {
      this.#releaseLeaseSync(accountId);
      throw err;
    } finally {
      clearInterval(renew);
    }
  }

  async #acquireLease(accountId: number): Promise<void> {
    const deadline = Date.now() + LOCK_WAIT_MS;
    let wait = 5;
    for (;;) {
      const got = this.#db
        .transaction(() => {
          const now = Date.now();
          const row = this.#sql('SELECT owner, expires_at FROM grant_locks WHERE account_id = ?').get(
            accountId,
          ) as Row | undefined;
          const owner = row ? String(row.owner) : undefined;
          if (row && owner !== this.#owner && Number(row.expires_at) > now) {
            if (!ownerIsGone(owner as string)) return false;
            this.#log.warn({ accountId }, 'grant lease of a process that is gone taken over');
          }
          this.#sql(
            'INSERT INTO grant_locks (account_id, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at',
          ).run(accountId, this.#owner, now + LOCK_LEASE_MS);
          return true;
        })
        .immediate();
      if (got) return;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for the grant lock of account ${accountId}`);
      // Another process holds the lease: poll with backoff rather than block the event loop.
      await new Promise((r) => setTimeout(r, wait));
      this.#checkOpen();
      wait = Math.min(wait * 2, 250);
    }
  }

  #releaseLeaseSync(accountId: number): void {
    this.#sql('DELETE FROM grant_locks WHERE account_id = ? AND owner = ?').run(accountId, this.#owner);
  }

  async countGrantsByStatus(): Promise<Record<GrantStatus, number>> {
    const out: Record<GrantStatus, number> = { active: 0, needs_consent: 0, error: 0 };
    for (const r of this.#sql('SELECT status, COUNT(*) AS n FROM grants GROUP BY status').all() as Row[]) {
      out[r.status as GrantStatus] = Number(r.n);
    }
    return out;
  }

  async accountStates(ids: readonly number[]): Promise<Map<number, AccountState>> {
    if (ids.length === 0) return new Map();
    // One prepared statement for any number of ids: the list travels as a JSON array.
    const rows = this.#sql(`${ACCOUNT_STATES_SQL} WHERE a.id IN (SELECT value FROM json_each(?))`).all(
      JSON.stringify(ids),
    ) as Row[];
    return accountStatesFromRows(rows);
  }

  // ---- announced grant statuses ----------------------------------------------------------

  async grantNotice(accountId: number): Promise<GrantStatus | null> {
    const row = this.#sql('SELECT status FROM grant_notices WHERE account_id = ?').get(accountId) as
      | Row
      | undefined;
    return (row?.status as GrantStatus | undefined) ?? null;
  }

  async claimGrantNotice(accountId: number, from: GrantStatus | null, to: GrantStatus): Promise<boolean> {
    const r =
      from === null
        ? this.#sql(
            'INSERT INTO grant_notices (account_id, status, at) SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM accounts WHERE id = ?) ON CONFLICT (account_id) DO NOTHING',
          ).run(accountId, to, Date.now(), accountId)
        : this.#sql('UPDATE grant_notices SET status = ?, at = ? WHERE account_id = ? AND status = ?').run(
            to,
            Date.now(),
            accountId,
            from,
          );
    return r.changes === 1;
  }

  async unannouncedGrants(): Promise<UnannouncedGrant[]> {
    return (this.#sql(UNANNOUNCED_SQL).all() as Row[]).map(unannouncedFromRow);
  }

  // ---- audit ---------------------------------------------------------------------------

  async audit(actor: string, action: string, accountId: number | null, detail?: string): Promise<void> {
    this.#auditSync(actor, action, accountId, detail);
  }

  async listAudit(accountId?: number, limit = 100): Promise<AuditEvent[]> {
    const rows = (
      accountId === undefined
        ? this.#sql('SELECT * FROM audit ORDER BY id DESC LIMIT ?').all(limit)
        : this.#sql('SELECT * FROM audit WHERE account_id = ? ORDER BY id DESC LIMIT ?').all(accountId, limit)
    ) as Row[];
    return rows.map((r) => ({
      at: Number(r.at),
      actor: String(r.actor),
      action: String(r.action),
      accountId: num(r.account_id),
      detail: str(r.detail),
    }));
  }

  // ---- key rotation --------------------------------------------------------------------

  async reencryptAll(actor = 'cli'): Promise<RotationResult> {
    return this.#db
      .transaction(() => {
        let total = 0;
        let rotated = 0;
        const rows = this.#sql(
          'SELECT account_id, refresh_token_enc, access_token_enc FROM grants',
        ).all() as Row[];
        const upd = this.#sql(
          'UPDATE grants SET refresh_token_enc = ?, access_token_enc = ? WHERE account_id = ?',
        );
        for (const row of rows) {
          const r = reencryptGrantRow(this.#keyring, row);
          total += r.total;
          rotated += r.rotated;
          if (r.rotated > 0) upd.run(r.values[0], r.values[1], Number(row.account_id));
        }
        this.#auditSync(
          actor,
          'key.rotate',
          null,
          `key=${this.#keyring.currentId} rotated=${rotated} total=${total}`,
        );
        return { total, rotated };
      })
      .immediate();
  }
}
