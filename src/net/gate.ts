import { Tarpit } from './tarpit.js';

/** The bounds of a PreauthGate; a reload may change them. */
export interface GateLimits {
  /** Connections not yet logged in from one client address (all listeners of this process). */
  readonly perAddress: number;
  /** Connections not yet logged in over all addresses (all listeners of this process). */
  readonly total: number;
}

/**
 * Counts the connections of this process that have not logged in yet, per client address and
 * in total, so one address (or a flood) cannot fill the listeners while real users wait: past
 * a bound a connection is told goodbye at once. A connection leaves the count when it logs in
 * or closes.
 */
export class PreauthGate {
  private readonly byAddress = new Map<string, number>();
  private count = 0;
  /** Where connections this gate refuses wait before they are told goodbye (off unless configured). */
  readonly tarpit = new Tarpit();

  constructor(private limits: GateLimits) {}

  configure(limits: GateLimits): void {
    this.limits = limits;
  }

  /** Takes a place for `address`, or says which bound is full. */
  admit(address: string): 'ok' | 'too_many_from_address' | 'too_many_unauthenticated' {
    if (this.count >= this.limits.total) return 'too_many_unauthenticated';
    const n = this.byAddress.get(address) ?? 0;
    if (n >= this.limits.perAddress) return 'too_many_from_address';
    this.byAddress.set(address, n + 1);
    this.count++;
    return 'ok';
  }

  /** The place `admit` gave is free again (logged in or closed). Call once per admitted connection. */
  release(address: string): void {
    const n = (this.byAddress.get(address) ?? 0) - 1;
    if (n > 0) this.byAddress.set(address, n);
    else this.byAddress.delete(address);
    this.count = Math.max(0, this.count - 1);
  }

  /** Connections counted now (for tests and the gauge). */
  get unauthenticated(): number {
    return this.count;
  }
}
