/**
 * Places taken per client address and in total, under bounds given at each take: what the
 * pre-auth gate and the tarpit both count. A place is given back exactly once.
 */
export class AddressCounter {
  private readonly byAddress = new Map<string, number>();
  private count = 0;

  /** Takes a place for `address`, or says which bound is full (the total is checked first). */
  take(address: string, perAddress: number, total: number): 'ok' | 'per_address' | 'total' {
    if (this.count >= total) return 'total';
    const n = this.byAddress.get(address) ?? 0;
    if (n >= perAddress) return 'per_address';
    this.byAddress.set(address, n + 1);
    this.count++;
    return 'ok';
  }

  /** Places `address` holds now. */
  of(address: string): number {
    return this.byAddress.get(address) ?? 0;
  }

  release(address: string): void {
    const n = (this.byAddress.get(address) ?? 0) - 1;
    if (n > 0) this.byAddress.set(address, n);
    else this.byAddress.delete(address);
    this.count = Math.max(0, this.count - 1);
  }

  get size(): number {
    return this.count;
  }
}
