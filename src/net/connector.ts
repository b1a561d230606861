import { performance } from 'node:perf_hooks';
import type { UpstreamConnection, UpstreamConnector, UpstreamTarget } from '../core/upstream.js';
import { isProxyError, type ProxyError } from '../errors.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { mapDialError } from './dial.js';

export interface ConnectorDeps {
  metrics?: Metrics | undefined;
  log?: Logger | undefined;
}

/** What a protocol's connection needs from its connector. */
export interface ConnectionContext {
  readonly provider: string;
  readonly metrics: Metrics | undefined;
  readonly log: Logger;
}

/** Foreign errors (socket, TLS) become ProxyErrors at the boundary. */
export function toProxyError(err: unknown): ProxyError {
  return isProxyError(err) ? err : mapDialError(err);
}

/** Milliseconds left before `deadline`, at least 1 (a zero timeout would mean "none"). */
export function remaining(deadline: number): number {
  return Math.max(1, deadline - Date.now());
}

/**
 * A protocol's connector with what every protocol measures around it: connects by result
 * (`aborted` when the login stopped the dial because its token failed first, which is not the
 * upstream's failure) and connect latency, labelled with the protocol.
 */
export function measuredConnector(
  protocol: string,
  deps: ConnectorDeps,
  open: (
    target: UpstreamTarget,
    ctx: ConnectionContext,
    signal: AbortSignal | undefined,
  ) => Promise<UpstreamConnection>,
): UpstreamConnector {
  const log = deps.log ?? silentLogger;
  const { metrics } = deps;
  return {
    async connect(target, labels, signal) {
      const t0 = performance.now();
      const { provider } = labels;
      try {
        const conn = await open(target, { provider, metrics, log }, signal);
        metrics?.upstreamConnects.inc({ protocol, provider, result: 'success' });
        metrics?.upstreamConnectSeconds.observe({ protocol, provider }, (performance.now() - t0) / 1000);
        return conn;
      } catch (err) {
        const pe = toProxyError(err);
        const result = signal?.aborted ? 'aborted' : pe.reason;
        metrics?.upstreamConnects.inc({ protocol, provider, result });
        log.debug({ provider, reason: pe.reason, detail: pe.detail }, 'upstream connect failed');
        throw pe;
      }
    },
  };
}
