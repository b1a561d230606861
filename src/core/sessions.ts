import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { ProtocolName } from './types.js';

/** Why the proxy ended a live session (a bounded metric label). */
export type TerminationReason = 'account_disabled' | 'account_removed' | 'no_grant' | 'needs_consent';

export interface LiveSession {
  /** Account label for the log line (the primary login, never a password). */
  readonly account: string;
  /** Metric label of the ended session. */
  readonly protocol: ProtocolName;
  readonly log: Logger;
  /** Destroys the session's sockets; never writes into the stream. */
  readonly end: () => void;
}

/** One per-account slot: released when the session ends; armed once it is spliced. */
export interface SessionSlot {
  release(): void;
  /** Makes the session endable by `SessionRegistry.end` (a no-op after release). */
  attach(session: LiveSession): void;
}

interface Entry {
  session?: LiveSession;
}

const SAID: Record<TerminationReason, string> = {
  account_disabled: 'account disabled',
  account_removed: 'account removed',
  no_grant: 'grant revoked or removed',
  needs_consent: 'grant needs consent',
};

/**
 * Live sessions per account, per process: the per-account cap, and the handle that ends an
 * account's spliced sessions when its access is withdrawn (disabled, removed, grant gone).
 */
export class SessionRegistry {
  private readonly live = new Map<number, Set<Entry>>();

  constructor(private readonly opts: { metrics?: Pick<Metrics, 'sessionsTerminated'> } = {}) {}

  /** Takes a slot, or returns null when the account already has `cap` sessions. */
  tryAcquire(accountId: number, cap: number): SessionSlot | null {
    let set = this.live.get(accountId);
    if ((set?.size ?? 0) >= cap) return null;
    if (!set) {
      set = new Set();
      this.live.set(accountId, set);
    }
    const entries = set;
    const entry: Entry = {};
    entries.add(entry);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        entries.delete(entry);
        if (entries.size === 0 && this.live.get(accountId) === entries) this.live.delete(accountId);
      },
      attach: (session) => {
        if (!released) entry.session = session;
      },
    };
  }

  count(accountId: number): number {
    return this.live.get(accountId)?.size ?? 0;
  }

  /** Accounts with at least one spliced session (the only ones worth rechecking). */
  accountIds(): number[] {
    const ids: number[] = [];
    for (const [id, set] of this.live) {
      for (const e of set) {
        if (e.session) {
          ids.push(id);
          break;
        }
      }
    }
    return ids;
  }

  /** Ends every spliced session of the account; returns how many. Sessions still logging in are left to their login checks. */
  end(accountId: number, reason: TerminationReason): number {
    const set = this.live.get(accountId);
    if (!set) return 0;
    let n = 0;
    for (const e of [...set]) {
      const s = e.session;
      if (!s) continue;
      // Once only: the slot itself goes when the splice reports both sockets closed.
      e.session = undefined;
      n++;
      this.opts.metrics?.sessionsTerminated.inc({ protocol: s.protocol, reason });
      s.log.info({ account: s.account, reason }, `live session closed: ${SAID[reason]}`);
      s.end();
    }
    return n;
  }
}
