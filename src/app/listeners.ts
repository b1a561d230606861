import { statSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { hasUpstream, upstreamFor } from '../config/presets.js';
import type { Config, ListenerConfig, Protocol } from '../config/schema.js';
import type { UpstreamCapabilities } from '../core/capabilities.js';
import type { LoginRunner } from '../core/login-runner.js';
import { targetKey, type UpstreamTarget } from '../core/upstream.js';
import { messageOf } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import type { PreauthGate } from '../net/gate.js';
import { sessionLimitsFromConfig } from '../net/limits.js';
import { createListener, type Listener, type ListenerUpdate } from '../net/listener.js';
import { ensureSelfSigned } from '../net/selfsigned.js';
import { tarpitLimitsFromConfig } from '../net/tarpit.js';
import { listenerPems, serverTlsContext, type TlsPems } from '../net/tls.js';
import { PROTOCOLS } from '../protocols/index.js';

/** How often listener certificate files are looked at (a renewal is picked up without a signal). */
const CERT_POLL_MS = 5000;

interface Running {
  readonly listener: Listener;
  update: ListenerUpdate;
  /** size:mtime of cert and key when last read; undefined for a generated pair or no TLS. */
  stamp: string | undefined;
}

export interface ListenerSetDeps {
  readonly config: Config;
  readonly runner: LoginRunner;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly capabilities: UpstreamCapabilities;
  readonly gate: PreauthGate;
  readonly refuseAddress: (address: string) => boolean;
}

/**
 * The client-facing listeners of one process: started from the config, changed by a reload
 * without dropping a session or closing a port that stays, and given a renewed certificate
 * when its files change on disk.
 */
export class ListenerSet {
  private readonly running = new Map<string, Running>();
  /** Removed or moved by a reload: no longer accepting, their sessions run on until they end. */
  private readonly retired: Listener[] = [];
  readonly addresses: Record<string, AddressInfo> = {};
  private certTimer: NodeJS.Timeout | undefined;

  constructor(private readonly deps: ListenerSetDeps) {}

  get size(): number {
    return this.running.size;
  }

  /** Binds every listener of `config`; throws (having closed what it opened) if one cannot start. */
  async start(config: Config): Promise<void> {
    this.configureTarpit(config);
    const fallback = await fallbackCertificate(config, this.deps.log);
    for (const lc of config.listeners) await this.open(lc, await this.settings(config, lc, fallback));
    this.certTimer = setInterval(() => void this.checkCertificates(), CERT_POLL_MS).unref();
  }

  /**
   * Applies a reload's listeners. Everything that can fail (certificate files, new binds) is
   * tried before an old port is given up; a listener that keeps its address and port swaps its
   * settings in place, so there is no gap. Returns the problems (the rest was applied).
   */
  async reload(config: Config): Promise<string[]> {
    this.configureTarpit(config);
    const problems: string[] = [];
    const fallback = await fallbackCertificate(config, this.deps.log);
    const wanted = new Map(config.listeners.map((l) => [l.name, l]));
    for (const [name, r] of this.running) {
      if (!wanted.has(name)) {
        await this.retire(name, r);
        this.deps.log.info({ listener: name }, 'listener removed by reload; its open sessions go on');
      }
    }
    for (const lc of config.listeners) {
      let update: ListenerUpdate;
      try {
        update = await this.settings(config, lc, fallback);
      } catch (err) {
        problems.push(`listener "${lc.name}": ${messageOf(err)}`);
        continue;
      }
      const old = this.running.get(lc.name);
      if (old && sameBind(old.update.cfg, lc)) {
        old.listener.update(update);
        old.update = update;
        old.stamp = certStamp(lc);
        continue;
      }
      try {
        // A moved listener's new port is bound before its old one is given up.
        const previous = old;
        this.running.delete(lc.name);
        await this.open(lc, update);
        if (previous) await this.retireListener(previous.listener);
      } catch (err) {
        if (old) this.running.set(lc.name, old);
        problems.push(`listener "${lc.name}": cannot listen on ${lc.address}:${lc.port} (${messageOf(err)})`);
      }
    }
    return problems;
  }

  /** Stops accepting, says goodbye to clients still logging in, drains spliced sessions for `drainMs`. */
  async close(drainMs: number): Promise<void> {
    clearInterval(this.certTimer);
    const all = [...[...this.running.values()].map((r) => r.listener), ...this.retired];
    this.running.clear();
    await Promise.all(all.map((l) => l.close({ drainMs })));
  }

  /** Refused connections of every listener share one tarpit, the gate's. */
  private configureTarpit(config: Config): void {
    this.deps.gate.tarpit.configure(
      tarpitLimitsFromConfig(config.limits),
      this.deps.log.child({ component: 'tarpit' }),
    );
  }

  private async open(lc: ListenerConfig, update: ListenerUpdate): Promise<void> {
    const listener = createListener(lc, {
      ...update,
      metrics: this.deps.metrics,
      log: this.deps.log,
    });
    this.addresses[lc.name] = await listener.listen();
    this.running.set(lc.name, { listener, update, stamp: certStamp(lc) });
  }

  private async retire(name: string, r: Running): Promise<void> {
    this.running.delete(name);
    delete this.addresses[name];
    await this.retireListener(r.listener);
  }

  private async retireListener(l: Listener): Promise<void> {
    this.retired.push(l);
    await l.stopAccepting();
  }

  /** The settings a listener runs with: certificate read now, the protocol's front door made now. */
  private async settings(
    config: Config,
    lc: ListenerConfig,
    fallback: () => { certFile: string; keyFile: string },
  ): Promise<ListenerUpdate> {
    const { runner, metrics, capabilities } = this.deps;
    const tls: TlsPems | undefined = lc.tls === 'none' ? undefined : await listenerPems(lc, fallback);
    // A certificate that does not parse or match its key is refused here, not at the first handshake.
    if (tls) serverTlsContext(tls, lc.min_tls_version);
    return {
      cfg: lc,
      ...(tls ? { tls } : {}),
      createSession: PROTOCOLS[lc.protocol].frontDoor(lc, {
        runner,
        limits: config.limits,
        metrics,
        upstreamCapabilities: () =>
          upstreamTargets(this.deps.config, lc.protocol).map((t) => capabilities.get(lc.protocol, t)),
        gate: this.deps.gate,
      }),
      limits: sessionLimitsFromConfig(config.limits),
      maxConnections: config.limits.max_connections,
      refuseAddress: this.deps.refuseAddress,
      tarpit: this.deps.gate.tarpit,
    };
  }

  /** A renewed certificate (e.g. by certbot) is served from the next handshake on; a half-written one waits. */
  private async checkCertificates(): Promise<void> {
    for (const [name, r] of this.running) {
      const lc = r.update.cfg;
      const stamp = certStamp(lc);
      if (stamp === undefined || stamp === r.stamp) continue;
      try {
        const tls = await listenerPems(lc, () => {
          throw new Error('no certificate files');
        });
        serverTlsContext(tls, lc.min_tls_version);
        r.update = { ...r.update, tls };
        r.listener.update(r.update);
        r.stamp = stamp;
        this.deps.metrics.certificateReloads.inc({ listener: name, result: 'success' });
        this.deps.log.info({ listener: name }, 'listener certificate reloaded from disk');
      } catch (err) {
        // Tried again on the next poll: a renewal may be writing the files right now.
        r.stamp = stamp;
        this.deps.metrics.certificateReloads.inc({ listener: name, result: 'invalid' });
        this.deps.log.warn(
          { listener: name, err: { message: messageOf(err) } },
          'listener certificate changed on disk but cannot be used; keeping the previous one',
        );
      }
    }
  }
}

/** The same socket serves both (port 0 included: the port the system picked stays). */
function sameBind(a: ListenerConfig, b: ListenerConfig): boolean {
  return a.address === b.address && a.port === b.port;
}

/** size and mtime of the certificate and key files; undefined without files of its own. */
function certStamp(lc: ListenerConfig): string | undefined {
  if (lc.tls === 'none' || !lc.cert_file || !lc.key_file) return undefined;
  try {
    const c = statSync(lc.cert_file);
    const k = statSync(lc.key_file);
    return `${c.size}:${c.mtimeMs}:${k.size}:${k.mtimeMs}`;
  } catch {
    return 'unreadable';
  }
}

/** Each provider's upstream server for a protocol (per-account overrides are not listed). */
export function upstreamTargets(config: Config, protocol: Protocol): UpstreamTarget[] {
  const out = new Map<string, UpstreamTarget>();
  for (const p of Object.values(config.providers)) {
    if (!hasUpstream(p, protocol)) continue;
    const t = upstreamFor(p, protocol);
    out.set(targetKey(t), t);
  }
  return [...out.values()];
}

/** The generated self-signed pair, made only when some TLS listener has no certificate of its own. */
export async function fallbackCertificate(
  config: Config,
  log: Logger,
): Promise<() => { certFile: string; keyFile: string }> {
  const needs = config.listeners.some((l) => l.tls !== 'none' && !l.cert_file);
  if (!needs) {
    return () => {
      throw new Error('no fallback certificate');
    };
  }
  const pair = await ensureSelfSigned(join(config.data_dir, 'tls'), { name: 'selfsigned' });
  log.warn(
    { certFile: pair.certFile, created: pair.created },
    pair.created
      ? '*** GENERATED A SELF-SIGNED CERTIFICATE for listeners without cert_file: clients will warn; configure cert_file/key_file for production ***'
      : '*** USING THE SELF-SIGNED CERTIFICATE for listeners without cert_file: configure cert_file/key_file for production ***',
  );
  return () => pair;
}
