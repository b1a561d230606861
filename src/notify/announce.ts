import type { NotifyEvent } from '../config/schema.js';
import type { GrantStatus, GrantStore } from '../store/types.js';
import { type OnGrantChange, transition } from './transitions.js';

/** What announcing through the store needs: the status last announced per grant, claimed by compare-and-set. */
export type NoticeStore = Pick<GrantStore, 'grantNotice' | 'claimGrantNotice' | 'unannouncedGrants'>;

/** The grant status each event announces. */
export const ANNOUNCED_STATUS: Readonly<Record<NotifyEvent, GrantStatus>> = {
  'grant.needs_consent': 'needs_consent',
  'grant.recovered': 'active',
};

/**
 * Claims the announcement of a grant's new status `to` for this process. False when `to` is
 * already the announced status: another process (or this one's store watch) has told it.
 */
export async function claimAnnouncement(
  store: NoticeStore,
  accountId: number,
  to: GrantStatus,
): Promise<boolean> {
  // A lost race re-reads what the winner recorded; three rounds cover any real interleaving.
  for (let round = 0; round < 3; round++) {
    const announced = await store.grantNotice(accountId);
    if (announced === to) return false;
    if (await store.claimGrantNotice(accountId, announced, to)) return true;
  }
  return false;
}

/**
 * One pass over the grants whose status differs from the one last announced, whoever changed
 * it (a CLI `grant import`, another instance, a reconnect served elsewhere): each change is
 * claimed, and `announce` is called for the claimed ones that are events. Returns how many.
 */
export async function announceChanged(store: NoticeStore, announce: OnGrantChange): Promise<number> {
  let n = 0;
  for (const g of await store.unannouncedGrants()) {
    // A grant seen for the first time is recorded, not announced: what came before is unknown.
    const event = g.announced === null ? null : transition(g.announced, g.status);
    if (!(await store.claimGrantNotice(g.accountId, g.announced, g.status))) continue;
    if (event) {
      announce(g.accountId, event, g.lastError);
      n++;
    }
  }
  return n;
}
