/**
 * Ordered schema migrations. Each step has SQL per dialect so a PostgreSQL store can run the
 * same list; versions are recorded in `schema_migrations` and never edited once released —
 * a change is a new step at the end.
 */
export interface Migration {
  version: number;
  name: string;
  sqlite: string;
  /** Filled in when the PostgreSQL store lands; the SQLite text documents the intent. */
  postgres?: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'accounts, logins, app passwords, grants, audit',
    sqlite: `
      CREATE TABLE accounts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        upstream_user TEXT NOT NULL,
        provider TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
        max_sessions INTEGER,
        upstream_override TEXT,
        credential_version INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        last_login_at INTEGER
      );
      CREATE TABLE account_logins (
        login TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        position INTEGER NOT NULL
      );
      CREATE INDEX account_logins_account ON account_logins(account_id);
      CREATE TABLE app_passwords (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        label TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER,
        UNIQUE (account_id, label)
      );
      CREATE TABLE grants (
        account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('refresh_token', 'client_credentials', 'jwt_bearer')),
        status TEXT NOT NULL CHECK (status IN ('active', 'needs_consent', 'error')),
        refresh_token_enc TEXT,
        access_token_enc TEXT,
        access_token_expires_at INTEGER,
        scope TEXT,
        last_refresh_at INTEGER,
        last_error TEXT,
        updated_at INTEGER NOT NULL
      );
      CREATE TABLE grant_locks (
        account_id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at INTEGER NOT NULL
      );
      CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        account_id INTEGER,
        detail TEXT
      );
      CREATE INDEX audit_account ON audit(account_id, id);
    `,
  },
];
