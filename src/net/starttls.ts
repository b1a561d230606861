import type { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';

export interface StartTlsHandlers {
  /** The handshake finished: read from `tls` from now on. */
  secure(tls: TLSSocket): void;
  /** The handshake failed. */
  failed(err: Error): void;
  /** The TLS socket closed (before or after the handshake). */
  closed(): void;
}

/**
 * The server side of STARTTLS / STLS for every protocol: writes the protocol's "go ahead"
 * reply on the cleartext socket, then wraps that socket in TLS. The caller has detached its
 * own listeners and checked that nothing was pipelined behind the command (injection).
 * Returns the TLS socket (handshake still running), or undefined when no longer wanted.
 */
export async function upgradeToTls(
  raw: Duplex,
  goAhead: string,
  secureContext: SecureContext,
  on: StartTlsHandlers,
  stillWanted: () => boolean,
): Promise<TLSSocket | undefined> {
  raw.on('error', () => {});
  await new Promise<void>((resolve) => raw.write(goAhead, () => resolve()));
  if (!stillWanted()) return undefined;
  const tls = new TLSSocket(raw, { isServer: true, secureContext });
  tls.once('secure', () => on.secure(tls));
  tls.once('error', (err) => on.failed(err));
  tls.once('close', () => {
    raw.destroy();
    on.closed();
  });
  return tls;
}
