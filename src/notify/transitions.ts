import type { NotifyEvent } from '../config/schema.js';
import type { GrantStatus, GrantStore, GrantTx } from '../store/types.js';

export type OnGrantChange = (accountId: number, event: NotifyEvent, reason: string | null) => void;

/** The event a status change is, or null: into needs_consent, or out of it back to active. */
export function transition(
  before: GrantStatus | null | undefined,
  after: GrantStatus | undefined,
): NotifyEvent | null {
  if (after === 'needs_consent' && before !== 'needs_consent') return 'grant.needs_consent';
  if (after === 'active' && before === 'needs_consent') return 'grant.recovered';
  return null;
}

/**
 * The store as a grant writer (token broker, onboarding) sees it, reporting each grant that
 * enters or leaves needs_consent once its write has committed.
 */
export function watchGrantChanges(store: GrantStore, onChange: OnGrantChange): GrantStore {
  async function withGrantLock<T>(accountId: number, fn: (tx: GrantTx) => Promise<T>): Promise<T> {
    let seen: GrantStatus | null | undefined;
    let change: { event: NotifyEvent; reason: string | null } | null = null;
    const out = await store.withGrantLock(accountId, (tx) =>
      fn({
        get: async () => {
          const g = await tx.get();
          seen ??= g?.status ?? null;
          return g;
        },
        update: (patch) => {
          const event = transition(seen, patch.status);
          if (event) change = { event, reason: patch.lastError ?? null };
          if (patch.status) seen = patch.status;
          return tx.update(patch);
        },
        ...(tx.commitRefreshToken ? { commitRefreshToken: tx.commitRefreshToken.bind(tx) } : {}),
      }),
    );
    const done = change as { event: NotifyEvent; reason: string | null } | null;
    if (done) onChange(accountId, done.event, done.reason);
    return out;
  }
  const putGrant: GrantStore['putGrant'] = async (accountId, grant, actor) => {
    const before = (await store.getGrant(accountId))?.status ?? null;
    await store.putGrant(accountId, grant, actor);
    const event = transition(before, grant.status);
    if (event) onChange(accountId, event, grant.lastError);
  };
  // Bound to the real store: its methods use private fields a plain delegate could not reach.
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'withGrantLock') return withGrantLock;
      if (prop === 'putGrant') return putGrant;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
