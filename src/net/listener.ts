import { randomBytes } from 'node:crypto';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { RejectReason, SessionLimits } from './limits.js';
import {
  isTrusted,
  type ProxySource,
  parseProxyHeader,
  plainAddress,
  startsLikeProxyHeader,
  trustList,
} from './proxyproto.js';
import { serverTlsContext, type TlsPems } from './tls.js';

/** The client end of one connection, as the listener found it. */
export interface Peer {
  readonly cid: string;
  readonly address: string;
  readonly port: number;
  /** Encrypted from the first byte (implicit TLS). */
  readonly secure: boolean;
}

/** One connection's pre-auth session, whatever the protocol. */
export interface FrontDoorSession {
  start(): void;
  /** Server shutdown: say goodbye in the protocol's words if still before login. */
  shutdown(): void;
  /** Resolves when the session (including any splice) is over. */
  readonly done: Promise<void>;
}

/** Made by a protocol's front door for each connection past its TLS/PROXY preamble. */
export type SessionFactory = (
  socket: Duplex,
  peer: Peer,
  context: { secureContext: SecureContext | undefined; log: Logger },
) => FrontDoorSession;

export function newConnectionId(): string {
  return randomBytes(6).toString('base64url');
}

export interface ListenerDeps {
  /** Resolved certificate and key PEMs (from the listener's files or a generated pair). */
  readonly tls?: TlsPems;
  /** The protocol's front door (metric label `protocol`). */
  readonly protocol: string;
  readonly createSession: SessionFactory;
  readonly limits: SessionLimits;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Refuse connections beyond this many open sockets on this listener. */
  readonly maxConnections?: number;
}

export interface Listener {
  readonly name: string;
  listen(): Promise<AddressInfo>;
  /**
   * Stops accepting, ends pre-auth sessions with `* BYE`, waits up to `drainMs` for spliced
   * sessions to finish on their own, then destroys what is left.
   */
  close(opts?: { drainMs?: number }): Promise<void>;
  /** Open client sockets (pre-auth and spliced). */
  readonly connections: number;
}

const SHUTDOWN_DRAIN_MS = 10_000;

export function createListener(cfg: ListenerConfig, deps: ListenerDeps): Listener {
  const { limits, metrics } = deps;
  let secureContext: SecureContext | undefined;
  if (cfg.tls !== 'none') {
    if (!deps.tls)
      throw new ConfigError(`listener "${cfg.name}": tls ${cfg.tls} needs a certificate and key`);
    secureContext = serverTlsContext(deps.tls, cfg.min_tls_version);
  }
  const trusted = cfg.proxy_protocol ? trustList(cfg.proxy_protocol.trusted) : undefined;
  const allowed = cfg.allow_from ? trustList(cfg.allow_from) : undefined;
  const sockets = new Set<Socket>();
  /** Sockets past their preamble, with their session (absent while PROXY/TLS preamble runs). */
  const sessions = new Map<Socket, FrontDoorSession>();
  const server: Server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
  if (deps.maxConnections !== undefined) server.maxConnections = deps.maxConnections;
  const log = deps.log.child({ listener: cfg.name });

  const refuse = (raw: Socket, reason: RejectReason) => {
    metrics.preauthRejections.inc({ protocol: deps.protocol, reason });
    log.info({ reason, client: plainAddress(raw.remoteAddress ?? '') }, 'connection refused before login');
    raw.destroy();
  };

  const startSession = (sock: Socket | TLSSocket, source: ProxySource | null, raw: Socket) => {
    const cid = newConnectionId();
    const address = source?.address ?? plainAddress(raw.remoteAddress ?? '');
    const port = source?.port ?? raw.remotePort ?? 0;
    const session = deps.createSession(
      sock,
      { cid, address, port, secure: cfg.tls === 'implicit' },
      { secureContext, log: log.child({ cid, client: address }) },
    );
    sessions.set(raw, session);
    void session.done.then(() => sessions.delete(raw));
    session.start();
  };

  // Present exactly when this listener speaks implicit TLS, so the TLS path always has its context.
  const implicitTls = cfg.tls === 'implicit' ? secureContext : undefined;

  /** Implicit TLS: handshake first (bounded by the idle limit), then the protocol's session. */
  const startTls = (raw: Socket, source: ProxySource | null, context: SecureContext) => {
    const timer = setTimeout(() => refuse(raw, 'idle_timeout'), limits.preauthIdleMs);
    raw.once('close', () => clearTimeout(timer));
    const tls = new TLSSocket(raw, { isServer: true, secureContext: context });
    tls.once('secure', () => {
      clearTimeout(timer);
      tls.removeAllListeners('error');
      metrics.tlsConnections.inc({
        protocol: deps.protocol,
        listener: cfg.name,
        version: tls.getProtocol() ?? 'unknown',
      });
      startSession(tls, source, raw);
    });
    tls.on('error', (err) => {
      clearTimeout(timer);
      log.debug({ err: { message: err.message } }, 'TLS handshake failed');
      refuse(raw, 'tls_handshake');
    });
  };

  const afterPreamble = (raw: Socket, source: ProxySource | null) => {
    // The real client (from the PROXY header when there is one) must be on the listener's allow list.
    if (allowed && !isTrusted(allowed, source?.address ?? raw.remoteAddress ?? '')) {
      return refuse(raw, 'not_allowed');
    }
    if (implicitTls) startTls(raw, source, implicitTls);
    else startSession(raw, source, raw);
  };

  /** Reads the PROXY header a trusted peer must send, then hands the rest on unread. */
  const readProxyHeader = (raw: Socket) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => refuse(raw, 'idle_timeout'), limits.preauthIdleMs);
    raw.once('close', () => clearTimeout(timer));
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf, limits.proxyHeaderBytes);
      if (r.kind === 'incomplete' && buf.length <= limits.proxyHeaderBytes) return;
      raw.off('data', onData);
      clearTimeout(timer);
      if (r.kind !== 'header') return refuse(raw, 'proxy_header_invalid');
      raw.pause();
      if (buf.length > r.length) raw.unshift(buf.subarray(r.length));
      afterPreamble(raw, r.source);
    };
    raw.on('data', onData);
  };

  /** Implicit TLS from an untrusted peer on a PROXY listener: a header instead of a ClientHello is refused. */
  const sniffThenTls = (raw: Socket, context: SecureContext) => {
    raw.once('data', (chunk: Buffer) => {
      raw.pause();
      if (startsLikeProxyHeader(chunk)) return refuse(raw, 'proxy_header_untrusted');
      raw.unshift(chunk);
      startTls(raw, null, context);
    });
  };

  server.on('connection', (raw: Socket) => {
    sockets.add(raw);
    raw.once('close', () => sockets.delete(raw));
    raw.on('error', () => {});
    metrics.connections.inc({ protocol: deps.protocol, listener: cfg.name, tls: cfg.tls });
    if (trusted && isTrusted(trusted, raw.remoteAddress ?? '')) readProxyHeader(raw);
    else if (trusted && implicitTls) sniffThenTls(raw, implicitTls);
    else afterPreamble(raw, null);
  });

  return {
    name: cfg.name,
    get connections() {
      return sockets.size;
    },
    listen: () =>
      new Promise<AddressInfo>((resolve, reject) => {
        server.once('error', reject);
        server.listen(cfg.port, cfg.address, () => {
          server.off('error', reject);
          const address = server.address();
          log.info({ address, tls: cfg.tls }, 'listening');
          // A TCP server reports an AddressInfo; a string would mean a pipe, which this never listens on.
          if (address === null || typeof address === 'string')
            reject(new Error(`listener "${cfg.name}": no TCP address`));
          else resolve(address);
        });
      }),
    close: async (opts = {}) => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const raw of sockets) {
        const session = sessions.get(raw);
        if (session) session.shutdown();
        else raw.destroy();
      }
      let timer: NodeJS.Timeout | undefined;
      const drained = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, opts.drainMs ?? SHUTDOWN_DRAIN_MS);
      });
      await Promise.race([closed, drained]);
      clearTimeout(timer);
      for (const raw of sockets) raw.destroy();
      await closed;
    },
  };
}
