import type { Socket } from 'node:net';
import type { AuthenticatedUpstream, UpstreamConnection, UpstreamTarget } from '../core/upstream.js';
import { ProxyError } from '../errors.js';
import { type Mechanism, oauthbearerBlob, pickMechanism, xoauth2Blob } from '../sasl/client.js';
import { type ConnectionContext, toProxyError } from './connector.js';

/** What the shared connection needs from a protocol's response reader. */
export interface UpstreamReader {
  /** The reader met a breach (limit, malformed input, close) and reads nothing more. */
  readonly failed: boolean;
  /** Bytes received that nobody asked for yet (unsolicited while idle makes the connection unusable). */
  readonly pendingBytes: number;
  /** Stops reading and returns the bytes read past the last response (forwarded first after login). */
  detach(): Buffer;
}

type State = 'ready' | 'authenticating' | 'authenticated' | 'closed';

// Keeps an error between hand-over and splice from crashing the process; the socket is destroyed anyway.
const swallow = () => {};

/**
 * An upstream connection past its greeting (and STARTTLS), whatever the protocol: state,
 * reusability, metrics and logs around the SASL exchange, and the hand-over of the raw socket.
 * A protocol supplies only its exchange (`AUTHENTICATE`, `AUTH`) and how it reads mechanisms.
 */
export abstract class SaslUpstreamConnection<R extends UpstreamReader> implements UpstreamConnection {
  private state: State = 'ready';

  constructor(
    protected readonly protocol: string,
    protected readonly socket: Socket,
    protected readonly reader: R,
    readonly capabilities: readonly string[],
    protected readonly target: UpstreamTarget,
    protected readonly ctx: ConnectionContext,
  ) {
    socket.once('close', () => this.setState('closed'));
  }

  /**
   * The protocol's SASL exchange with `blob` until success; returns capabilities learned at login
   * (undefined: keep the pre-login ones). A clean refusal calls `refused()` first so the
   * connection stays usable for one retry; any other throw makes it unusable.
   */
  protected abstract exchange(
    mechanism: Mechanism,
    blob: string,
    deadline: number,
  ): Promise<readonly string[] | undefined>;

  /** The mechanism names the server offers, as `AUTH=X` entries (IMAP's form). */
  protected abstract offeredMechanisms(): readonly string[];

  get reusable(): boolean {
    return (
      this.state === 'ready' &&
      !this.reader.failed &&
      !this.socket.destroyed &&
      this.reader.pendingBytes === 0
    );
  }

  destroy(): void {
    this.socket.destroy();
    this.setState('closed');
  }

  /** Nothing to keep it for without a pool: close it. */
  recycle(): void {
    this.destroy();
  }

  private setState(next: State): void {
    if (this.state === next || this.state === 'closed') return;
    this.ctx.log.trace({ from: this.state, to: next }, 'upstream state');
    this.state = next;
  }

  /** The server refused this token cleanly: the connection is back before authentication. */
  protected refused(): void {
    this.setState('ready');
  }

  async authenticate(user: string, accessToken: string): Promise<AuthenticatedUpstream> {
    const mechanism = pickMechanism(this.target.mechanism, this.offeredMechanisms());
    const { provider, metrics, log } = this.ctx;
    const count = (result: string) =>
      metrics?.upstreamAuths.inc({ protocol: this.protocol, provider, mechanism, result });
    if (!this.reusable) {
      count('upstream_unavailable');
      throw new ProxyError('upstream_unavailable', 'upstream connection not reusable', {
        detail: 'not_reusable',
      });
    }
    this.setState('authenticating');
    const deadline = Date.now() + this.target.auth_timeout_seconds * 1000;
    const t = this.target;
    const blob =
      mechanism === 'xoauth2'
        ? xoauth2Blob(user, accessToken)
        : oauthbearerBlob(user, accessToken, t.servername ?? t.host, t.port);
    try {
      const capabilities = (await this.exchange(mechanism, blob, deadline)) ?? this.capabilities;
      const buffered = this.reader.detach();
      this.socket.on('error', swallow);
      this.setState('authenticated');
      count('success');
      log.debug({ provider, mechanism }, 'upstream authenticated');
      return { socket: this.socket, capabilities, buffered };
    } catch (err) {
      const pe = toProxyError(err);
      if (this.state === 'authenticating') this.destroy();
      count(pe.reason);
      log.debug({ provider, mechanism, reason: pe.reason, detail: pe.detail }, 'upstream auth failed');
      throw pe;
    }
  }
}

/** `AUTH A B` (SMTP EHLO) or `SASL A B` (POP3 CAPA) lines → ['AUTH=A','AUTH=B'], the form pickMechanism reads. */
export function saslMechanisms(lines: readonly string[], keyword: RegExp): string[] {
  const out: string[] = [];
  for (const k of lines) {
    const list = keyword.exec(k)?.[1];
    if (list !== undefined) for (const m of list.split(' ')) if (m) out.push(`AUTH=${m.toUpperCase()}`);
  }
  return out;
}
