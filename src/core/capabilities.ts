import type { ProtocolName } from './types.js';
import { targetKey, type UpstreamTarget } from './upstream.js';

/**
 * What each upstream server advertised when the proxy last connected (its capabilities or EHLO
 * keywords), so a front door can promise its clients only what the servers behind it keep.
 * Bounded by the number of distinct upstream targets.
 */
export class UpstreamCapabilities {
  private readonly seen = new Map<string, readonly string[]>();

  note(protocol: ProtocolName, target: UpstreamTarget, capabilities: readonly string[]): void {
    const key = `${protocol}\0${targetKey(target)}`;
    if (!this.seen.has(key) && this.seen.size >= 10_000) this.seen.clear();
    this.seen.set(key, capabilities);
  }

  get(protocol: ProtocolName, target: UpstreamTarget): readonly string[] | undefined {
    return this.seen.get(`${protocol}\0${targetKey(target)}`);
  }
}
