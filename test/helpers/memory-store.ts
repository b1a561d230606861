import type {
  AccountRecord,
  AccountStatus,
  AppPasswordRecord,
  AuditEvent,
  GrantRecord,
  GrantStatus,
  GrantStore,
  GrantTx,
  NewAccount,
} from '../../src/store/types.js';

/**
 * A complete in-memory GrantStore for fast tests. withGrantLock serializes per account with a
 * promise chain and applies patches only when `fn` resolves, like the SQL stores' transactions.
 */
export class MemoryGrantStore implements GrantStore {
  readonly accounts = new Map<number, AccountRecord>();
  readonly passwords = new Map<number, AppPasswordRecord>();
  readonly grants = new Map<number, GrantRecord>();
  readonly auditLog: AuditEvent[] = [];
  readonly #locks = new Map<number, Promise<unknown>>();
  #nextId = 1;

  async migrate(): Promise<void> {}
  async ping(): Promise<void> {}
  async close(): Promise<void> {}

  async createAccount(input: NewAccount, actor: string): Promise<AccountRecord> {
    const login = input.login.toLowerCase();
    if (await this.getAccountByLogin(login)) throw new Error(`login ${login} already exists`);
    const rec: AccountRecord = {
      id: this.#nextId++,
      logins: [login],
      upstreamUser: input.upstreamUser,
      provider: input.provider,
      status: 'active',
      maxSessions: input.maxSessions ?? null,
      upstreamOverride: input.upstreamOverride ?? null,
      createdAt: Date.now(),
      lastLoginAt: null,
    };
    this.accounts.set(rec.id, rec);
    await this.audit(actor, 'account.create', rec.id);
    return { ...rec };
  }
  async getAccount(id: number): Promise<AccountRecord | null> {
    const a = this.accounts.get(id);
    return a ? { ...a, logins: [...a.logins] } : null;
  }
  async getAccountByLogin(login: string): Promise<AccountRecord | null> {
    const l = login.toLowerCase();
    for (const a of this.accounts.values()) if (a.logins.includes(l)) return this.getAccount(a.id);
    return null;
  }
  async listAccounts(): Promise<AccountRecord[]> {
    return [...this.accounts.keys()].map((id) => ({ ...(this.accounts.get(id) as AccountRecord) }));
  }
  async setAccountStatus(id: number, status: AccountStatus, actor: string): Promise<void> {
    this.#account(id).status = status;
    await this.audit(actor, `account.${status}`, id);
  }
  async addLogin(id: number, login: string, actor: string): Promise<void> {
    const l = login.toLowerCase();
    if (await this.getAccountByLogin(l)) throw new Error(`login ${l} already exists`);
    this.#account(id).logins.push(l);
    await this.audit(actor, 'account.add_login', id, l);
  }
  async deleteAccount(id: number, actor: string): Promise<void> {
    this.#account(id);
    this.accounts.delete(id);
    this.grants.delete(id);
    for (const [pid, p] of this.passwords) if (p.accountId === id) this.passwords.delete(pid);
    await this.audit(actor, 'account.delete', id);
  }
  async recordLogin(id: number, at: number): Promise<void> {
    this.#account(id).lastLoginAt = at;
  }

  async addAppPassword(
    accountId: number,
    label: string,
    hash: string,
    actor: string,
  ): Promise<AppPasswordRecord> {
    this.#account(accountId);
    const rec: AppPasswordRecord = {
      id: this.#nextId++,
      accountId,
      label,
      hash,
      createdAt: Date.now(),
      lastUsedAt: null,
    };
    this.passwords.set(rec.id, rec);
    await this.audit(actor, 'password.add', accountId, label);
    return { ...rec };
  }
  async listAppPasswords(accountId: number): Promise<AppPasswordRecord[]> {
    return [...this.passwords.values()].filter((p) => p.accountId === accountId).map((p) => ({ ...p }));
  }
  async revokeAppPassword(accountId: number, labelOrId: string, actor: string): Promise<boolean> {
    for (const [id, p] of this.passwords) {
      if (p.accountId === accountId && (p.label === labelOrId || String(id) === labelOrId)) {
        this.passwords.delete(id);
        await this.audit(actor, 'password.revoke', accountId, p.label);
        return true;
      }
    }
    return false;
  }
  async touchAppPassword(id: number, at: number): Promise<void> {
    const p = this.passwords.get(id);
    if (p) p.lastUsedAt = at;
  }

  async getGrant(accountId: number): Promise<GrantRecord | null> {
    const g = this.grants.get(accountId);
    return g ? { ...g } : null;
  }
  async putGrant(accountId: number, grant: Omit<GrantRecord, 'accountId' | 'updatedAt'>, actor: string) {
    this.#account(accountId);
    this.grants.set(accountId, { ...grant, accountId, updatedAt: Date.now() });
    await this.audit(actor, 'grant.put', accountId, grant.kind);
  }
  async deleteGrant(accountId: number, actor: string): Promise<void> {
    this.grants.delete(accountId);
    await this.audit(actor, 'grant.delete', accountId);
  }
  async withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    const prev = this.#locks.get(accountId) ?? Promise.resolve();
    const run = prev.then(async () => {
      let pending: Partial<GrantRecord> | null = null;
      const tx: GrantTx = {
        get: async () => {
          const g = await this.getGrant(accountId);
          return g && pending ? { ...g, ...pending } : g;
        },
        update: async (patch) => {
          pending = { ...(pending ?? {}), ...patch };
        },
      };
      const result = await fn(tx);
      const cur = this.grants.get(accountId);
      if (pending) {
        if (!cur) throw new Error(`grant for account ${accountId} vanished during update`);
        this.grants.set(accountId, { ...cur, ...(pending as Partial<GrantRecord>), updatedAt: Date.now() });
      }
      return result;
    });
    this.#locks.set(
      accountId,
      run.catch(() => undefined),
    );
    return run;
  }
  async countGrantsByStatus(): Promise<Record<GrantStatus, number>> {
    const out: Record<GrantStatus, number> = { active: 0, needs_consent: 0, error: 0 };
    for (const g of this.grants.values()) out[g.status]++;
    return out;
  }

  async audit(actor: string, action: string, accountId: number | null, detail?: string): Promise<void> {
    this.auditLog.push({ at: Date.now(), actor, action, accountId, detail: detail ?? null });
  }
  async listAudit(accountId?: number, limit = 100): Promise<AuditEvent[]> {
    return this.auditLog
      .filter((e) => accountId === undefined || e.accountId === accountId)
      .slice(-limit)
      .reverse();
  }

  #account(id: number): AccountRecord {
    const a = this.accounts.get(id);
    if (!a) throw new Error(`no account ${id}`);
    return a;
  }
}
