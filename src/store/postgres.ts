import pg from 'pg';
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

/** Pool or checked-out client: both run queries, only a client holds a transaction. */
type Queryable = pg.Pool | pg.PoolClient;

/** Arbitrary constant key for pg_advisory_xact_lock: every instance of this proxy migrates under it. */
const MIGRATION_LOCK_KEY = 0x696d6170;
/** How long a waiter queues for a grant's row lock (the SQLite store's LOCK_WAIT_MS). */
const LOCK_WAIT = '60s';
/** A holder stalled this long inside the lock loses its session, so its lock frees (SQLite's lease). */
const LOCK_HOLD = '120s';
const UNIQUE_VIOLATION = '23505';

/** An id spelled into a multi-statement query (those take no parameters): integers only. */
function sqlInt(n: number): string {
  if (!Number.isSafeInteger(n)) throw new Error(`not an integer id: ${n}`);
  return String(n);
}

export interface PostgresStoreOptions {
  /** Pool size per process (default 10). */
  maxConnections?: number;
}

/** `host:port/database` of a postgres URL: the only part of it that may be logged. */
export function describePostgresUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || 'localhost'}:${u.port || '5432'}${u.pathname || '/'}`;
  } catch {
    return '(unparsable postgres_url)';
  }
}

/**
 * GrantStore on PostgreSQL, for several proxy instances sharing one database. Same rows,
 * encryption (keyring, associated data) and audit as the SQLite store; a refresh holds the
 * grant's row lock (SELECT … FOR UPDATE) so one instance refreshes and the others re-read.
 */
export class PostgresGrantStore implements GrantStore, KeyRotatable {
  readonly #pool: pg.Pool;
  readonly #keyring: Keyring;
  readonly #log: Logger;
  readonly #where: string;
  readonly #mutex = new KeyedMutex<number>();
  #closed = false;
  /** withGrantLock calls holding or waiting for a lock: close() waits for them. */
  #lockers = 0;
  #lockersDone: (() => void) | undefined;

  private constructor(pool: pg.Pool, where: string, keyring: Keyring, log: Logger) {
    this.#pool = pool;
    this.#where = where;
    this.#keyring = keyring;
    this.#log = log;
  }

  /** Connects and migrates. The URL carries a password: errors and logs name host/db only. */
  static async open(
    url: string,
    keyring: Keyring,
    log: Logger = silentLogger,
    opts: PostgresStoreOptions = {},
  ): Promise<PostgresGrantStore> {
    const where = describePostgresUrl(url);
    const pool = new pg.Pool({
      connectionString: url,
      max: opts.maxConnections ?? 10,
      connectionTimeoutMillis: 10_000,
      idleTimeoutMillis: 30_000,
      keepAlive: true,
      application_name: 'imap-oauth-proxy',
    });
    // An idle client losing its connection must not crash the process; the next query reconnects.
    pool.on('error', (err) => log.warn({ store: where, err: err.message }, 'postgres connection lost'));
    const store = new PostgresGrantStore(pool, where, keyring, log);
    try {
      await store.migrate();
    } catch (cause) {
      await pool.end().catch(() => {});
      throw new ConfigError(`cannot open PostgreSQL store ${where}: ${messageOf(cause)}`, { cause });
    }
    log.info({ store: where }, 'postgres store ready');
    return store;
  }

  /** Runs fn in one transaction on one pooled connection; commits on resolve, rolls back on throw. */
  async #tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.#pool.connect();
    // A checked-out client has no pool error listener: without this, a connection lost while a
    // refresh is in flight would be an unhandled 'error' event and end the process.
    const onError = (err: Error) =>
      this.#log.warn({ store: this.#where, err: err.message }, 'postgres connection lost in a transaction');
    c.on('error', onError);
    let broken = false;
    try {
      await c.query('BEGIN');
      const out = await fn(c);
      await c.query('COMMIT');
      return out;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {
        broken = true;
      });
      throw err;
    } finally {
      c.off('error', onError);
      // A connection whose ROLLBACK failed is in an unknown state: drop it instead of reusing it.
      c.release(broken);
    }
  }

  async migrate(): Promise<void> {
    const applied = await this.#tx(async (c) => {
      // Several proxies starting together: the first migrates, the others wait here and find it done.
      await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
      await c.query(
        'CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)',
      );
      const done = new Set(
        (await c.query('SELECT version FROM schema_migrations')).rows.map((r: Row) => Number(r.version)),
      );
      const now: { version: number; name: string }[] = [];
      for (const m of MIGRATIONS) {
        if (done.has(m.version)) continue;
        await c.query(m.postgres);
        await c.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [
          m.version,
          m.name,
          Date.now(),
        ]);
        now.push(m);
      }
      return now;
    });
    for (const m of applied) {
      this.#log.info(
        { version: m.version, migration: m.name, store: this.#where },
        'store migration applied',
      );
    }
  }

  async ping(): Promise<void> {
    await this.#pool.query('SELECT 1');
  }

  /** Lock waiters fail with "grant store is closing"; holders finish (and commit) before the pool ends. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#lockers > 0) await new Promise<void>((r) => (this.#lockersDone = r));
    await this.#pool.end();
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error('grant store is closing');
  }

  // ---- accounts ------------------------------------------------------------------------

  async #account(q: Queryable, row: Row | undefined): Promise<AccountRecord | null> {
    if (!row) return null;
    const logins = (
      await q.query('SELECT login FROM account_logins WHERE account_id = $1 ORDER BY position', [
        Number(row.id),
      ])
    ).rows.map((r: Row) => String(r.login));
    return accountFromRow(row, logins);
  }

  async #audit(
    q: Queryable,
    actor: string,
    action: string,
    accountId: number | null,
    detail?: string,
  ): Promise<void> {
    await q.query('INSERT INTO audit (at, actor, action, account_id, detail) VALUES ($1, $2, $3, $4, $5)', [
      Date.now(),
      actor,
      action,
      accountId,
      detail ?? null,
    ]);
    // Mirrored to the log so account and grant changes reach the admin's log pipeline too.
    this.#log.info({ audit: { actor, action, accountId, detail: detail ?? null } }, `audit: ${action}`);
  }

  async #bumpVersion(c: pg.PoolClient, id: number): Promise<void> {
    await c.query('UPDATE accounts SET credential_version = credential_version + 1 WHERE id = $1', [id]);
  }

  async #requireAccount(c: pg.PoolClient, id: number): Promise<void> {
    // FOR UPDATE: a concurrent delete of the account waits instead of racing this change.
    const r = await c.query('SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE', [id]);
    if (r.rowCount === 0) throw new ConfigError(`no account with id ${id}`);
  }

  async #insertLogin(c: pg.PoolClient, id: number, login: string): Promise<void> {
    const l = normalizeLogin(login);
    if (l === '') throw new ConfigError('login name must not be empty');
    const inUse = new ConfigError(`login "${l}" is already in use`);
    if ((await c.query('SELECT 1 FROM account_logins WHERE login = $1', [l])).rowCount) throw inUse;
    try {
      // Another instance may insert the same login between the check and here: the key decides.
      await c.query(
        `INSERT INTO account_logins (login, account_id, position)
         SELECT $1, $2, COALESCE(MAX(position), -1) + 1 FROM account_logins WHERE account_id = $2`,
        [l, id],
      );
    } catch (err) {
      throw isUniqueViolation(err) ? inUse : err;
    }
  }

  async createAccount(input: NewAccount, actor: string): Promise<AccountRecord> {
    const id = await this.#tx(async (c) => {
      const r = await c.query(
        `INSERT INTO accounts (upstream_user, provider, status, max_sessions, upstream_override, created_at)
         VALUES ($1, $2, 'active', $3, $4, $5) RETURNING id`,
        [
          input.upstreamUser,
          input.provider,
          input.maxSessions ?? null,
          input.upstreamOverride ? JSON.stringify(input.upstreamOverride) : null,
          Date.now(),
        ],
      );
      const newId = Number((r.rows[0] as Row).id);
      await this.#insertLogin(c, newId, input.login);
      await this.#audit(c, actor, 'account.create', newId, `provider=${input.provider}`);
      return newId;
    });
    return createdAccount(id, await this.getAccount(id));
  }

  async getAccount(id: number): Promise<AccountRecord | null> {
    const r = await this.#pool.query('SELECT * FROM accounts WHERE id = $1', [id]);
    return this.#account(this.#pool, r.rows[0]);
  }

  async getAccountByLogin(login: string): Promise<AccountRecord | null> {
    const r = await this.#pool.query(
      'SELECT a.* FROM accounts a JOIN account_logins l ON l.account_id = a.id WHERE l.login = $1',
      [normalizeLogin(login)],
    );
    return this.#account(this.#pool, r.rows[0]);
  }

  async listAccounts(): Promise<AccountRecord[]> {
    const accounts = (await this.#pool.query('SELECT * FROM accounts ORDER BY id')).rows as Row[];
    const logins = new Map<number, string[]>();
    for (const r of (
      await this.#pool.query('SELECT account_id, login FROM account_logins ORDER BY account_id, position')
    ).rows as Row[]) {
      const id = Number(r.account_id);
      logins.set(id, [...(logins.get(id) ?? []), String(r.login)]);
    }
    // One query for every account's logins instead of one per account.
    return accounts.map((row) => accountFromRow(row, logins.get(Number(row.id)) ?? []));
  }

  async setAccountStatus(id: number, status: AccountStatus, actor: string): Promise<void> {
    await this.#tx(async (c) => {
      await this.#requireAccount(c, id);
      await c.query('UPDATE accounts SET status = $1 WHERE id = $2', [status, id]);
      await this.#bumpVersion(c, id);
      await this.#audit(c, actor, `account.${status === 'active' ? 'enable' : 'disable'}`, id);
    });
  }

  async addLogin(id: number, login: string, actor: string): Promise<void> {
    await this.#tx(async (c) => {
      await this.#requireAccount(c, id);
      await this.#insertLogin(c, id, login);
      await this.#audit(c, actor, 'account.alias_add', id, `login=${normalizeLogin(login)}`);
    });
  }

  async deleteAccount(id: number, actor: string): Promise<void> {
    await this.#tx(async (c) => {
      await this.#requireAccount(c, id);
      await c.query('DELETE FROM accounts WHERE id = $1', [id]);
      await this.#audit(c, actor, 'account.remove', id);
    });
  }

  async recordLogin(id: number, at: number): Promise<void> {
    await this.#pool.query('UPDATE accounts SET last_login_at = $1 WHERE id = $2', [at, id]);
  }

  // ---- app passwords -------------------------------------------------------------------

  async addAppPassword(
    accountId: number,
    label: string,
    hash: string,
    actor: string,
  ): Promise<AppPasswordRecord> {
    const dup = new ConfigError(`app password label "${label}" already exists for this account`);
    return this.#tx(async (c) => {
      await this.#requireAccount(c, accountId);
      if (
        (
          await c.query('SELECT 1 FROM app_passwords WHERE account_id = $1 AND label = $2', [
            accountId,
            label,
          ])
        ).rowCount
      ) {
        throw dup;
      }
      const r = await c
        .query(
          'INSERT INTO app_passwords (account_id, label, hash, created_at) VALUES ($1, $2, $3, $4) RETURNING *',
          [accountId, label, hash, Date.now()],
        )
        .catch((err: unknown) => {
          throw isUniqueViolation(err) ? dup : err;
        });
      await this.#bumpVersion(c, accountId);
      await this.#audit(c, actor, 'password.add', accountId, `label=${label}`);
      return appPasswordFromRow(r.rows[0] as Row);
    });
  }

  async listAppPasswords(accountId: number): Promise<AppPasswordRecord[]> {
    const r = await this.#pool.query('SELECT * FROM app_passwords WHERE account_id = $1 ORDER BY id', [
      accountId,
    ]);
    return (r.rows as Row[]).map((row) => appPasswordFromRow(row));
  }

  async revokeAppPassword(accountId: number, labelOrId: string, actor: string): Promise<boolean> {
    return this.#tx(async (c) => {
      let r = await c.query(
        'DELETE FROM app_passwords WHERE account_id = $1 AND label = $2 RETURNING label',
        [accountId, labelOrId],
      );
      if (r.rowCount === 0 && /^\d+$/.test(labelOrId)) {
        r = await c.query('DELETE FROM app_passwords WHERE account_id = $1 AND id = $2 RETURNING label', [
          accountId,
          Number(labelOrId),
        ]);
      }
      if (r.rowCount === 0) return false;
      await this.#bumpVersion(c, accountId);
      await this.#audit(c, actor, 'password.revoke', accountId, `label=${String((r.rows[0] as Row).label)}`);
      return true;
    });
  }

  async touchAppPassword(id: number, at: number): Promise<void> {
    await this.#pool.query('UPDATE app_passwords SET last_used_at = $1 WHERE id = $2', [at, id]);
  }

  // ---- grants --------------------------------------------------------------------------

  async #readGrant(q: Queryable, accountId: number, forUpdate = false): Promise<GrantRecord | null> {
    const r = await q.query(`SELECT * FROM grants WHERE account_id = $1${forUpdate ? ' FOR UPDATE' : ''}`, [
      accountId,
    ]);
    const row = r.rows[0] as Row | undefined;
    if (!row) return null;
    return grantFromRow(this.#keyring, accountId, row);
  }

  async #writeGrant(c: pg.PoolClient, accountId: number, g: GrantInput): Promise<void> {
    await c.query(
      `INSERT INTO grants (account_id, kind, status, refresh_token_enc, access_token_enc, access_token_expires_at,
         scope, last_refresh_at, last_error, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
       ON CONFLICT (account_id) DO UPDATE SET kind = EXCLUDED.kind, status = EXCLUDED.status,
         refresh_token_enc = EXCLUDED.refresh_token_enc, access_token_enc = EXCLUDED.access_token_enc,
         access_token_expires_at = EXCLUDED.access_token_expires_at, scope = EXCLUDED.scope,
         last_refresh_at = EXCLUDED.last_refresh_at, last_error = EXCLUDED.last_error,
         updated_at = EXCLUDED.updated_at`,
      [
        accountId,
        g.kind,
        g.status,
        encryptField(this.#keyring, accountId, 'refresh_token', g.refreshToken),
        encryptField(this.#keyring, accountId, 'access_token', g.accessToken),
        g.accessTokenExpiresAt,
        g.scope,
        g.lastRefreshAt,
        g.lastError,
        Date.now(),
      ],
    );
  }

  async getGrant(accountId: number): Promise<GrantRecord | null> {
    return this.#readGrant(this.#pool, accountId);
  }

  async putGrant(accountId: number, grant: GrantInput, actor: string): Promise<void> {
    await this.#tx(async (c) => {
      await this.#requireAccount(c, accountId);
      await this.#writeGrant(c, accountId, grant);
      await this.#audit(c, actor, 'grant.put', accountId, `kind=${grant.kind} status=${grant.status}`);
    });
  }

  async deleteGrant(accountId: number, actor: string): Promise<void> {
    await this.#tx(async (c) => {
      await c.query('DELETE FROM grants WHERE account_id = $1', [accountId]);
      await this.#audit(c, actor, 'grant.delete', accountId);
    });
  }

  /**
   * One transaction holding the grant row's lock for the whole of `fn` (including the refresh's
   * network call): another instance's SELECT … FOR UPDATE waits, then reads the committed fresh
   * token. The process mutex queues this process's own callers so they hold one pooled
   * connection between them, not one each. A holder that dies frees the lock with its session
   * (the server ends it when the socket closes). `tx.commitRefreshToken` commits the rotated
   * token at once and takes the row lock again.
   */
  async withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    this.#checkOpen();
    this.#lockers++;
    try {
      return await this.#mutex.run(accountId, () => {
        this.#checkOpen();
        return this.#tx(async (c) => {
          await this.#lockRow(c, accountId, false);
          const tx: GrantTx = {
            get: () => this.#readGrant(c, accountId),
            update: async (patch: GrantPatch) => {
              const cur = await this.#readGrant(c, accountId);
              if (!cur) throw new Error(`grant for account ${accountId} vanished during update`);
              const { accountId: _a, updatedAt: _u, ...base } = cur;
              await this.#writeGrant(c, accountId, { ...base, ...patch });
            },
            // Committed at once (the old token is spent at the server), then the row is locked again.
            commitRefreshToken: async (refreshToken: string) => {
              const enc = encryptField(this.#keyring, accountId, 'refresh_token', refreshToken) as string;
              // One round trip to durable: a parameterized UPDATE and its COMMIT would take two.
              await c.query(
                `UPDATE grants SET refresh_token_enc = ${c.escapeLiteral(enc)}, updated_at = ${Date.now()} WHERE account_id = ${sqlInt(accountId)}; COMMIT`,
              );
              await this.#lockRow(c, accountId, true);
            },
          };
          return fn(tx);
        });
      });
    } finally {
      if (--this.#lockers === 0) this.#lockersDone?.();
    }
  }

  /** Row lock with bounded wait and hold; `begin` opens the transaction it lives in. */
  async #lockRow(c: pg.PoolClient, accountId: number, begin: boolean): Promise<void> {
    // One round trip (a simple multi-statement query): every refresh takes it, twice with rotation.
    await c.query(
      `${begin ? 'BEGIN; ' : ''}SET LOCAL lock_timeout = '${LOCK_WAIT}'; ` +
        `SET LOCAL idle_in_transaction_session_timeout = '${LOCK_HOLD}'; ` +
        `SELECT 1 FROM grants WHERE account_id = ${sqlInt(accountId)} FOR UPDATE`,
    );
  }

  async countGrantsByStatus(): Promise<Record<GrantStatus, number>> {
    const out: Record<GrantStatus, number> = { active: 0, needs_consent: 0, error: 0 };
    const r = await this.#pool.query('SELECT status, COUNT(*) AS n FROM grants GROUP BY status');
    for (const row of r.rows as Row[]) out[row.status as GrantStatus] = Number(row.n);
    return out;
  }

  async accountStates(ids: readonly number[]): Promise<Map<number, AccountState>> {
    if (ids.length === 0) return new Map();
    const r = await this.#pool.query(`${ACCOUNT_STATES_SQL} WHERE a.id = ANY($1::int[])`, [[...ids]]);
    return accountStatesFromRows(r.rows as Row[]);
  }

  // ---- announced grant statuses ----------------------------------------------------------

  async grantNotice(accountId: number): Promise<GrantStatus | null> {
    const r = await this.#pool.query('SELECT status FROM grant_notices WHERE account_id = $1', [accountId]);
    return ((r.rows[0] as Row | undefined)?.status as GrantStatus | undefined) ?? null;
  }

  async claimGrantNotice(accountId: number, from: GrantStatus | null, to: GrantStatus): Promise<boolean> {
    const r =
      from === null
        ? await this.#pool.query(
            'INSERT INTO grant_notices (account_id, status, at) SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $1) ON CONFLICT (account_id) DO NOTHING',
            [accountId, to, Date.now()],
          )
        : await this.#pool.query(
            'UPDATE grant_notices SET status = $2, at = $3 WHERE account_id = $1 AND status = $4',
            [accountId, to, Date.now(), from],
          );
    return r.rowCount === 1;
  }

  async unannouncedGrants(): Promise<UnannouncedGrant[]> {
    return ((await this.#pool.query(UNANNOUNCED_SQL)).rows as Row[]).map(unannouncedFromRow);
  }

  // ---- audit ---------------------------------------------------------------------------

  async audit(actor: string, action: string, accountId: number | null, detail?: string): Promise<void> {
    await this.#audit(this.#pool, actor, action, accountId, detail);
  }

  async listAudit(accountId?: number, limit = 100): Promise<AuditEvent[]> {
    const r =
      accountId === undefined
        ? await this.#pool.query('SELECT * FROM audit ORDER BY id DESC LIMIT $1', [limit])
        : await this.#pool.query('SELECT * FROM audit WHERE account_id = $1 ORDER BY id DESC LIMIT $2', [
            accountId,
            limit,
          ]);
    return (r.rows as Row[]).map((row) => ({
      at: Number(row.at),
      actor: String(row.actor),
      action: String(row.action),
      accountId: num(row.account_id),
      detail: str(row.detail),
    }));
  }

  // ---- key rotation --------------------------------------------------------------------

  async reencryptAll(actor = 'cli'): Promise<RotationResult> {
    return this.#tx(async (c) => {
      let total = 0;
      let rotated = 0;
      // FOR UPDATE: a refresh on another instance cannot write a value under the old key meanwhile.
      const rows = (
        await c.query('SELECT account_id, refresh_token_enc, access_token_enc FROM grants FOR UPDATE')
      ).rows as Row[];
      for (const row of rows) {
        const r = reencryptGrantRow(this.#keyring, row);
        total += r.total;
        rotated += r.rotated;
        if (r.rotated > 0) {
          await c.query(
            'UPDATE grants SET refresh_token_enc = $1, access_token_enc = $2 WHERE account_id = $3',
            [r.values[0], r.values[1], Number(row.account_id)],
          );
        }
      }
      await this.#audit(
        c,
        actor,
        'key.rotate',
        null,
        `key=${this.#keyring.currentId} rotated=${rotated} total=${total}`,
      );
      return { total, rotated };
    });
  }
}

function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === UNIQUE_VIOLATION;
}
