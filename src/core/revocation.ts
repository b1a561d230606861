import type { Logger } from '../log.js';
import type { AccountState, GrantStore, GrantTx } from '../store/types.js';
import type { SessionRegistry, TerminationReason } from './sessions.js';

type StateReader = Pick<GrantStore, 'accountStates'>;

/** Why an account's live sessions must end, or null while it may keep them. */
export function withdrawal(state: AccountState | undefined): TerminationReason | null {
  if (!state) return 'account_removed';
  if (state.accountStatus === 'disabled') return 'account_disabled';
  if (state.grantStatus === null) return 'no_grant';
  // 'error' is a failed refresh (endpoint down, throttled): transient, the session stays.
  if (state.grantStatus === 'needs_consent') return 'needs_consent';
  return null;
}

/**
 * One pass: reads the accounts that have live sessions (one batched read, none when there
 * are no sessions) and ends the sessions of those whose access was withdrawn. Returns how many.
 */
export async function recheckSessions(registry: SessionRegistry, store: StateReader): Promise<number> {
  const ids = registry.accountIds();
  if (ids.length === 0) return 0;
  const states = await store.accountStates(ids);
  let ended = 0;
  for (const id of ids) {
    const reason = withdrawal(states.get(id));
    if (reason) ended += registry.end(id, reason);
  }
  return ended;
}

/**
 * Runs `recheckSessions` every `intervalMs`: the CLI (another process, perhaps another host
 * on PostgreSQL) only writes the store, so the serving process has to look. Stop with the result.
 */
export function startSessionRecheck(opts: {
  registry: SessionRegistry;
  store: StateReader;
  intervalMs: number;
  log: Logger;
}): () => void {
  let running = false;
  const timer = setInterval(() => {
    // A slow store must not pile passes up.
    if (running) return;
    running = true;
    recheckSessions(opts.registry, opts.store)
      .catch((err: unknown) => {
        // An unreachable store ends nothing: sessions stay until a check succeeds.
        opts.log.warn({ err }, 'live session recheck failed; sessions kept');
      })
      .finally(() => {
        running = false;
      });
  }, opts.intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * The store as the token broker sees it, reporting a grant it marks needs_consent (after the
 * write commits), so this process ends that account's sessions at once instead of at the next pass.
 */
export function watchConsentLoss(store: GrantStore, onLost: (accountId: number) => void): GrantStore {
  async function withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    let lost = false;
    const out = await store.withGrantLock(accountId, (tx) =>
      fn({
        get: () => tx.get(),
        update: (patch) => {
          if (patch.status === 'needs_consent') lost = true;
          return tx.update(patch);
        },
        // The broker's early save of a rotated refresh token must reach the real store.
        ...(tx.commitRefreshToken ? { commitRefreshToken: tx.commitRefreshToken.bind(tx) } : {}),
      }),
    );
    if (lost) onLost(accountId);
    return out;
  }
  // Bound to the real store: its methods use private fields a plain delegate could not reach.
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'withGrantLock') return withGrantLock;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
