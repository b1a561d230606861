import { createHmac, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { LRUCache } from 'lru-cache';
import { type Logger, silentLogger } from '../log.js';
import { normalizeLogin } from '../store/login.js';
import type { AccountRecord, GrantStore } from '../store/types.js';
import type { LoginLimiter } from './limiter.js';
import {
  generateAppPassword,
  hashAppPassword,
  normalizeAppPassword,
  verifyAppPassword,
} from './passwords.js';
import type { CredentialChecker, CredentialResult } from './types.js';

/** What a verified-cache entry remembers: enough to notice revocation, never the password. */
/** scrypt checks one client address may run at once; more wait their turn. */
const CHECKS_PER_ADDRESS = 4;
/** Checks one address may have waiting; beyond that it is refused like a limited one. */
const WAITING_PER_ADDRESS = 256;
const LIMITED = Symbol('limited');

export interface VerifiedEntry {
  accountId: number;
  passwordId: number;
  credentialVersion: number | undefined;
}

export interface CredentialCheckerOptions {
  store: GrantStore;
  limiter?: LoginLimiter;
  /** config tokens.credential_cache_seconds */
  cacheSeconds: number;
  cacheEntries?: number;
  /** Tests pass their own to inspect keys. */
  cache?: LRUCache<string, VerifiedEntry>;
  /** Write app password last_used at most this often per password. */
  touchIntervalMs?: number;
  log?: Logger;
  now?: () => number;
}

const FAILED: CredentialResult = { ok: false, reason: 'bad_credentials' };

/**
 * Login name + app password → account. Wrong password and unknown user give the same answer
 * after the same scrypt work; successes are cached under an HMAC with a per-process key, so
 * the plaintext is never a cache key and a copy of memory does not allow offline guessing
 * without that key.
 */
export class StoreCredentialChecker implements CredentialChecker {
  readonly #store: GrantStore;
  readonly #limiter: LoginLimiter | undefined;
  /** Password checks running and waiting per client address. */
  readonly #turns = new Map<string, { running: number; waiting: (() => void)[] }>();
  readonly #cache: LRUCache<string, VerifiedEntry>;
  readonly #hmacKey = randomBytes(32);
  readonly #inflight = new Map<string, Promise<number | null | typeof LIMITED>>();
  readonly #touched = new LRUCache<number, number>({ max: 10000 });
  readonly #touchMs: number;
  readonly #log: Logger;
  readonly #now: () => number;
  #dummy: Promise<string> | undefined;

  constructor(opts: CredentialCheckerOptions) {
    this.#store = opts.store;
    this.#limiter = opts.limiter;
    this.#cache =
      opts.cache ??
      new LRUCache<string, VerifiedEntry>({ max: opts.cacheEntries ?? 10000, ttl: opts.cacheSeconds * 1000 });
    this.#touchMs = opts.touchIntervalMs ?? 60_000;
    this.#log = opts.log ?? silentLogger;
    this.#now = opts.now ?? Date.now;
  }

  /** Cache key: HMAC-SHA256(process key, login \0 password), both normalized. */
  cacheKey(login: string, password: string): string {
    return createHmac('sha256', this.#hmacKey)
      .update(`${normalizeLogin(login)}\0${normalizeAppPassword(password)}`)
      .digest('base64url');
  }

  // A real hash of a random password: unknown users pay the same scrypt as known ones.
  #dummyHash(): Promise<string> {
    this.#dummy ??= hashAppPassword(generateAppPassword());
    return this.#dummy;
  }

  async verify(login: string, password: string, clientAddress: string): Promise<CredentialResult> {
    const decision = this.#limiter?.check(login, clientAddress);
    if (decision?.action === 'refuse') return { ok: false, reason: 'limited' };
    if (decision?.action === 'delay') await sleep(decision.delayMs);

    const key = this.cacheKey(login, password);
    const account = await this.#store.getAccountByLogin(login);
    const hit = this.#cache.get(key);
    if (hit) {
      // One indexed read tells us whether a password was revoked or the account disabled since.
      if (account && account.id === hit.accountId && account.credentialVersion === hit.credentialVersion) {
        return this.#succeed(account, hit.passwordId, login, clientAddress, key, false);
      }
      this.#cache.delete(key);
    }

    // Concurrent first logins with the same credentials share one scrypt run.
    let pending = this.#inflight.get(key);
    if (!pending) {
      pending = this.#inTurn(login, clientAddress, () => this.#check(account, password)).finally(() =>
        this.#inflight.delete(key),
      );
      this.#inflight.set(key, pending);
    }
    const matched = await pending;
    if (matched === LIMITED) return { ok: false, reason: 'limited' };
    if (!account || matched === null) {
      this.#limiter?.recordFailure(login, clientAddress);
      return FAILED;
    }
    if (account.status !== 'active') return { ok: false, reason: 'account_disabled' };
    return this.#succeed(account, matched, login, clientAddress, key, true);
  }

  /**
   * Runs a password check when this address's turn comes: at most CHECKS_PER_ADDRESS at once,
   * the rest queued (a burst of real first logins just waits a moment). The limiter is asked
   * again when the turn comes, so a parallel spray stops as soon as its failures say so instead
   * of every guess getting a scrypt run.
   */
  async #inTurn(
    login: string,
    address: string,
    check: () => Promise<number | null>,
  ): Promise<number | null | typeof LIMITED> {
    let turn = this.#turns.get(address);
    if (!turn) {
      turn = { running: 0, waiting: [] };
      this.#turns.set(address, turn);
    }
    const t = turn;
    if (t.running >= CHECKS_PER_ADDRESS) {
      if (t.waiting.length >= WAITING_PER_ADDRESS) return LIMITED;
      await new Promise<void>((resolve) => t.waiting.push(resolve));
    } else t.running++;
    try {
      if (this.#limiter?.check(login, address).action === 'refuse') return LIMITED;
      return await check();
    } finally {
      const next = t.waiting.shift();
      if (next) next();
      else if (--t.running === 0) this.#turns.delete(address);
    }
  }

  /** Id of the app password that matches, or null. Always runs at least one scrypt. */
  async #check(account: AccountRecord | null, password: string): Promise<number | null> {
    const candidates = account ? await this.#store.listAppPasswords(account.id) : [];
    if (candidates.length === 0) {
      await verifyAppPassword(password, await this.#dummyHash());
      return null;
    }
    // In parallel on the thread pool: the wall time stays one scrypt for typical accounts.
    const results = await Promise.all(candidates.map((c) => verifyAppPassword(password, c.hash)));
    return candidates.find((_, i) => results[i])?.id ?? null;
  }

  async #succeed(
    account: AccountRecord,
    passwordId: number,
    login: string,
    clientAddress: string,
    key: string,
    fresh: boolean,
  ): Promise<CredentialResult> {
    this.#limiter?.recordSuccess(login, clientAddress);
    if (fresh) {
      this.#cache.set(key, {
        accountId: account.id,
        passwordId,
        credentialVersion: account.credentialVersion,
      });
    }
    const now = this.#now();
    const last = this.#touched.get(passwordId);
    if (last === undefined || now - last >= this.#touchMs) {
      this.#touched.set(passwordId, now);
      try {
        await this.#store.touchAppPassword(passwordId, now);
        await this.#store.recordLogin(account.id, now);
      } catch (err) {
        // Bookkeeping only: a busy store must not fail a correct login.
        this.#log.warn({ err, accountId: account.id }, 'could not record last use of app password');
      }
    }
    return { ok: true, account };
  }
}
