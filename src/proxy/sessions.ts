/** Concurrent spliced sessions per account, for the per-account cap. Per process. */
export class SessionCounter {
  private readonly counts = new Map<number, number>();

  /** Takes a slot, or returns null when the account already has `cap` sessions. */
  tryAcquire(accountId: number, cap: number): (() => void) | null {
    const n = this.counts.get(accountId) ?? 0;
    if (n >= cap) return null;
    this.counts.set(accountId, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.counts.get(accountId) ?? 1) - 1;
      if (left <= 0) this.counts.delete(accountId);
      else this.counts.set(accountId, left);
    };
  }

  count(accountId: number): number {
    return this.counts.get(accountId) ?? 0;
  }
}
