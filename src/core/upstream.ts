import type { Duplex } from 'node:stream';
import type { ResolvedUpstream } from '../config/presets.js';

/** One protocol's upstream server with every setting resolved. */
export type UpstreamTarget = ResolvedUpstream;

/** The connection settings that make two targets interchangeable before authentication. */
export function targetKey(t: UpstreamTarget): string {
  return JSON.stringify([t.host, t.port, t.tls, t.servername ?? '', t.ca_file ?? '']);
}

/** An upstream connection past its greeting (and STARTTLS), not yet authenticated; any protocol. */
export interface UpstreamConnection {
  /** Capabilities before authentication. */
  readonly capabilities: readonly string[];
  /**
   * SASL XOAUTH2 / OAUTHBEARER in the protocol's words. Resolves once upstream says OK (and the
   * post-login probe, if configured, passed). Throws ProxyError: 'upstream_rejected' (token
   * refused; the connection stays usable for one retry), 'authorization_failed',
   * 'upstream_unavailable', 'protocol_error', 'timeout'.
   */
  authenticate(user: string, accessToken: string, renew?: TokenRenewal): Promise<AuthenticatedUpstream>;
  /** Still open and in the not-authenticated state (a retry can reuse it). */
  readonly reusable: boolean;
  destroy(): void;
  /** Never used for a login (its token failed first): a pool may keep it for the next one. */
  recycle(): void;
}

/**
 * Gets this session's token again (an upstream that keeps using tokens after login, such as an
 * HTTP API); `force` after the far end refused the last one.
 */
export type TokenRenewal = (force: boolean) => Promise<string>;

export interface AuthenticatedUpstream {
  /** The raw upstream socket, paused, with no proxy reader attached. */
  readonly socket: Duplex;
  /** Capabilities after login (from the tagged OK or a CAPABILITY command). */
  readonly capabilities: readonly string[];
  /** Bytes upstream sent after its tagged OK that the proxy already read (forward first). */
  readonly buffered: Buffer;
}

export interface UpstreamConnector {
  /** Dial, read greeting, STARTTLS if configured. Throws ProxyError('upstream_unavailable' | 'timeout' | 'protocol_error'). */
  connect(
    target: UpstreamTarget,
    labels: { provider: string },
    signal?: AbortSignal,
  ): Promise<UpstreamConnection>;
}
