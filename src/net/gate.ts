import { AddressCounter } from './address-counter.js';
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
  private readonly places = new AddressCounter();
  /** Where connections this gate refuses wait before they are told goodbye (off unless configured). */
  readonly tarpit = new Tarpit();

  constructor(private limits: GateLimits) {}

  configure(limits: GateLimits): void {
    this.limits = limits;
  }

  /** Takes a place for `address`, or says which bound is full. */
  admit(address: string): 'ok' | 'too_many_from_address' | 'too_many_unauthenticated' {
    const r = this.places.take(address, this.limits.perAddress, this.limits.total);
    return r === 'ok' ? 'ok' : r === 'total' ? 'too_many_unauthenticated' : 'too_many_from_address';
  }

  /** The place `admit` gave is free again (logged in or closed). Call once per admitted connection. */
  release(address: string): void {
    this.places.release(address);
  }

  /** Connections counted now (for tests and the gauge). */
  get unauthenticated(): number {
    return this.places.size;
  }
}
