import { randomBytes } from 'node:crypto';
import { type AddressInfo, type BlockList, createServer, type Server, type Socket } from 'node:net';
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
import type { Tarpit } from './tarpit.js';
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
  /** The protocol's front door (the listener's `protocol` labels its metrics). */
  readonly createSession: SessionFactory;
  readonly limits: SessionLimits;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** Refuse connections beyond this many open sockets on this listener. */
  readonly maxConnections?: number;
  /**
   * An address every login from which would be refused anyway (the limiter locked it): its
   * connections are closed at once, before a TLS handshake or a password check costs anything.
   */
  readonly refuseAddress?: (address: string) => boolean;
  /** Where connections of a locked address wait before they are closed (absent: closed at once). */
  readonly tarpit?: Tarpit;
}

/** What a reload may change on a listener that keeps its address and port. */
export type ListenerUpdate = Pick<
  ListenerDeps,
  'tls' | 'createSession' | 'limits' | 'maxConnections' | 'refuseAddress' | 'tarpit'
> & {
  readonly cfg: ListenerConfig;
};

export interface Listener {
  readonly name: string;
  listen(): Promise<AddressInfo>;
  /**
   * New settings for connections accepted from now on (TLS mode and certificate, limits,
   * allow lists, the protocol's front door); sessions already open keep theirs.
   */
  update(next: ListenerUpdate): void;
  /** Stops accepting; sessions already open run on until they end (a listener removed by a reload). */
  stopAccepting(): Promise<void>;
  /**
   * Stops accepting, ends pre-auth sessions with `* BYE`, waits up to `drainMs` for spliced
   * sessions to finish on their own, then destroys what is left.
   */
  close(opts?: { drainMs?: number }): Promise<void>;
  /** Open client sockets (pre-auth and spliced). */
  readonly connections: number;
}

export const SHUTDOWN_DRAIN_MS = 10_000;

/** Everything a connection is accepted with; swapped whole by a reload. */
interface Settings {
  readonly cfg: ListenerConfig;
  readonly limits: SessionLimits;
  readonly createSession: SessionFactory;
  readonly secureContext: SecureContext | undefined;
  /** Present exactly when the listener speaks implicit TLS, so the TLS path always has its context. */
  readonly implicitTls: SecureContext | undefined;
  readonly trusted: BlockList | undefined;
  readonly allowed: BlockList | undefined;
  readonly refuseAddress: ((address: string) => boolean) | undefined;
  readonly tarpit: Tarpit | undefined;
}

function settingsFor(cfg: ListenerConfig, deps: Omit<ListenerUpdate, 'cfg'>): Settings {
  let secureContext: SecureContext | undefined;
  if (cfg.tls !== 'none') {
    if (!deps.tls)
      throw new ConfigError(`listener "${cfg.name}": tls ${cfg.tls} needs a certificate and key`);
    secureContext = serverTlsContext(deps.tls, cfg.min_tls_version);
  }
  return {
    cfg,
    limits: deps.limits,
    createSession: deps.createSession,
    secureContext,
    implicitTls: cfg.tls === 'implicit' ? secureContext : undefined,
    trusted: cfg.proxy_protocol ? trustList(cfg.proxy_protocol.trusted) : undefined,
    allowed: cfg.allow_from ? trustList(cfg.allow_from) : undefined,
    refuseAddress: deps.refuseAddress,
    tarpit: deps.tarpit,
  };
}

export function createListener(cfg: ListenerConfig, deps: ListenerDeps): Listener {
  const { metrics } = deps;
  let now = settingsFor(cfg, deps);
  const sockets = new Set<Socket>();
  /** Sockets past their preamble, with their session (absent while PROXY/TLS preamble runs). */
  const sessions = new Map<Socket, FrontDoorSession>();
  const server: Server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 });
  if (deps.maxConnections !== undefined) server.maxConnections = deps.maxConnections;
  const log = deps.log.child({ listener: cfg.name });

  const refuse = (set: Settings, raw: Socket, reason: RejectReason, level: 'info' | 'debug' = 'info') => {
    metrics.preauthRejections.inc({ protocol: set.cfg.protocol, reason });
    log[level]({ reason, client: plainAddress(raw.remoteAddress ?? '') }, 'connection refused before login');
    raw.destroy();
  };

  /**
   * Every login from this address would be refused: the connection waits in the tarpit (no TLS
   * handshake, no greeting), then is closed without a word, so a reconnect loop runs at the
   * tarpit's pace; closed at once when the tarpit is off or full.
   */
  const refuseLocked = (set: Settings, raw: Socket, address: string) => {
    const held = set.tarpit?.hold({
      address,
      socket: raw,
      protocol: set.cfg.protocol,
      reason: 'address_locked',
      metrics,
      // The tarpit logged the address once; a line per connection would cost more than the connection.
      done: () => refuse(set, raw, 'address_locked', 'debug'),
    });
    if (!held) refuse(set, raw, 'address_locked');
  };

  const startSession = (set: Settings, sock: Socket | TLSSocket, source: ProxySource | null, raw: Socket) => {
    const cid = newConnectionId();
    const address = source?.address ?? plainAddress(raw.remoteAddress ?? '');
    const port = source?.port ?? raw.remotePort ?? 0;
    const session = set.createSession(
      sock,
      { cid, address, port, secure: set.cfg.tls === 'implicit' },
      { secureContext: set.secureContext, log: log.child({ cid, client: address }) },
    );
    sessions.set(raw, session);
    void session.done.then(() => sessions.delete(raw));
    session.start();
  };

  /** Implicit TLS: handshake first (bounded by the idle limit), then the protocol's session. */
  const startTls = (set: Settings, raw: Socket, source: ProxySource | null, context: SecureContext) => {
    const timer = setTimeout(() => refuse(set, raw, 'idle_timeout'), set.limits.preauthIdleMs);
    raw.once('close', () => clearTimeout(timer));
    const tls = new TLSSocket(raw, { isServer: true, secureContext: context });
    tls.once('secure', () => {
      clearTimeout(timer);
      tls.removeAllListeners('error');
      metrics.tlsConnections.inc({
        protocol: set.cfg.protocol,
        listener: cfg.name,
        version: tls.getProtocol() ?? 'unknown',
      });
      startSession(set, tls, source, raw);
    });
    tls.on('error', (err) => {
      clearTimeout(timer);
      log.debug({ err: { message: err.message } }, 'TLS handshake failed');
      refuse(set, raw, 'tls_handshake');
    });
  };

  const afterPreamble = (set: Settings, raw: Socket, source: ProxySource | null) => {
    // The real client (from the PROXY header when there is one) must be on the listener's allow list.
    const address = plainAddress(source?.address ?? raw.remoteAddress ?? '');
    if (set.allowed && !isTrusted(set.allowed, address)) return refuse(set, raw, 'not_allowed');
    if (set.refuseAddress?.(address)) return refuseLocked(set, raw, address);
    if (set.implicitTls) startTls(set, raw, source, set.implicitTls);
    else startSession(set, raw, source, raw);
  };

  /** Reads the PROXY header a trusted peer must send, then hands the rest on unread. */
  const readProxyHeader = (set: Settings, raw: Socket) => {
    let buf = Buffer.alloc(0);
    const { limits } = set;
    const timer = setTimeout(() => refuse(set, raw, 'idle_timeout'), limits.preauthIdleMs);
    raw.once('close', () => clearTimeout(timer));
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const r = parseProxyHeader(buf, limits.proxyHeaderBytes);
      if (r.kind === 'incomplete' && buf.length <= limits.proxyHeaderBytes) return;
      raw.off('data', onData);
      clearTimeout(timer);
      if (r.kind !== 'header') return refuse(set, raw, 'proxy_header_invalid');
      raw.pause();
      if (buf.length > r.length) raw.unshift(buf.subarray(r.length));
      afterPreamble(set, raw, r.source);
    };
    raw.on('data', onData);
  };

  /** Implicit TLS from an untrusted peer on a PROXY listener: a header instead of a ClientHello is refused. */
  const sniffThenTls = (set: Settings, raw: Socket, context: SecureContext) => {
    raw.once('data', (chunk: Buffer) => {
      raw.pause();
      if (startsLikeProxyHeader(chunk)) return refuse(set, raw, 'proxy_header_untrusted');
      raw.unshift(chunk);
      startTls(set, raw, null, context);
    });
  };

  server.on('connection', (raw: Socket) => {
    sockets.add(raw);
    raw.once('close', () => sockets.delete(raw));
    raw.on('error', () => {});
    // One connection runs on the settings it was accepted with, even if a reload swaps them meanwhile.
    const set = now;
    metrics.connections.inc({ protocol: set.cfg.protocol, listener: cfg.name, tls: set.cfg.tls });
    if (set.trusted && isTrusted(set.trusted, raw.remoteAddress ?? '')) readProxyHeader(set, raw);
    else if (set.trusted && set.implicitTls) sniffThenTls(set, raw, set.implicitTls);
    else afterPreamble(set, raw, null);
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
    update: (next) => {
      now = settingsFor(next.cfg, next);
      if (next.maxConnections !== undefined) server.maxConnections = next.maxConnections;
      log.info({ tls: next.cfg.tls }, 'listener settings reloaded');
    },
    stopAccepting: () =>
      new Promise<void>((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        // Resolve once the port is released; open sessions keep the server's close callback pending.
        setImmediate(resolve);
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
