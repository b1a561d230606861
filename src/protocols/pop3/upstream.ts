import type { Socket } from 'node:net';
import type {
  AuthenticatedUpstream,
  UpstreamConnection,
  UpstreamConnector,
  UpstreamTarget,
} from '../../core/upstream.js';
import { isProxyError, ProxyError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import { type ConnectorDeps, measuredConnector, remaining, toProxyError } from '../../net/connector.js';
import { type DialOptions, dial, upgradeTls } from '../../net/dial.js';
import {
  classifyAuthNo,
  decodeFailureContinuation,
  failureAck,
  type Mechanism,
  oauthbearerBlob,
  pickMechanism,
  type SaslFailure,
  xoauth2Blob,
} from '../../sasl/client.js';
import { type Pop3Response, Pop3ResponseReader } from './response-reader.js';
import { POP3_UPSTREAM_LIMITS } from './upstream-limits.js';

type State = 'ready' | 'authenticating' | 'authenticated' | 'closed';

const PROTOCOL = 'pop3';

export const POP3_DISABLED_HINT =
  'POP3 is disabled for this mailbox at the provider; the administrator must enable it ' +
  '(Exchange: Set-CASMailbox -PopEnabled $true; Gmail: Settings, Forwarding and POP/IMAP, Enable POP)';

/** Provider wording of a temporary refusal that is about rate, not an outage. */
const THROTTLED = /too many|throttl|rate limit|exceeded/i;
/** `[SYS/PERM]` wording that says the protocol itself is switched off for the mailbox. */
const DISABLED = /not enabled|disabled|not allowed|not permitted/i;

// Keeps an error between hand-over and splice from crashing the process; the socket is destroyed anyway.
const swallow = () => {};

/** CAPA `SASL A B` → ['AUTH=A','AUTH=B'], the form pickMechanism reads. */
export function saslCapabilities(capa: readonly string[]): string[] {
  const out: string[] = [];
  for (const line of capa) {
    const list = /^SASL(?: (.*))?$/i.exec(line)?.[1];
    if (list !== undefined) for (const m of list.split(' ')) if (m) out.push(`AUTH=${m.toUpperCase()}`);
  }
  return out;
}

/**
 * The `-ERR` that ends AUTH as a ProxyError, by its RFC 2449/3206 response code first: IN-USE
 * (another session holds the maildrop), SYS/TEMP and LOGIN-DELAY (later), SYS/PERM (no token
 * fixes it; the protocol switched off when the wording says so); `[AUTH]` or no code is a
 * refused token unless the wording is temporary or the JSON challenge said otherwise.
 */
export function classifyAuthErr(r: Pop3Response, challenge: SaslFailure | undefined): ProxyError {
  const msg = `upstream refused AUTH with -ERR${r.code ? ` [${r.code}]` : ''}`;
  switch (r.code) {
    case 'IN-USE':
      return new ProxyError('mailbox_in_use', msg, { detail: 'in_use' });
    case 'SYS/TEMP':
      return new ProxyError('upstream_unavailable', msg, {
        detail: THROTTLED.test(r.text) ? 'throttled' : 'temporary',
      });
    case 'LOGIN-DELAY':
      return new ProxyError('upstream_unavailable', msg, { detail: 'throttled' });
    case 'SYS/PERM':
      if (DISABLED.test(r.text)) {
        return new ProxyError('protocol_disabled', msg, { detail: 'no', clientText: POP3_DISABLED_HINT });
      }
      return new ProxyError('authorization_failed', msg, { detail: challenge?.detail ?? 'no' });
  }
  const f = classifyAuthNo(r.text, challenge);
  return new ProxyError(f.reason, msg, { detail: f.detail });
}

async function command(socket: Socket, reader: Pop3ResponseReader, line: string, deadline: number) {
  socket.write(`${line}\r\n`);
  return reader.next(remaining(deadline));
}

class Pop3UpstreamConnection implements UpstreamConnection {
  private state: State = 'ready';

  constructor(
    private readonly socket: Socket,
    private readonly reader: Pop3ResponseReader,
    readonly capabilities: readonly string[],
    private readonly target: UpstreamTarget,
    private readonly provider: string,
    private readonly deps: { metrics?: Metrics | undefined; log: Logger },
  ) {
    socket.once('close', () => this.setState('closed'));
  }

  get reusable(): boolean {
    // Unsolicited bytes while idle (e.g. an `-ERR` before an inactivity close) make it unusable too.
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
    this.deps.log.trace({ from: this.state, to: next }, 'upstream state');
    this.state = next;
  }

  async authenticate(user: string, accessToken: string): Promise<AuthenticatedUpstream> {
    const mechanism = pickMechanism(this.target.mechanism, saslCapabilities(this.capabilities));
    const count = (result: string) =>
      this.deps.metrics?.upstreamAuths.inc({
        protocol: PROTOCOL,
        provider: this.provider,
        mechanism,
        result,
      });
    if (!this.reusable) {
      count('upstream_unavailable');
      throw new ProxyError('upstream_unavailable', 'upstream connection not reusable', {
        detail: 'not_reusable',
      });
    }
    this.setState('authenticating');
    const deadline = Date.now() + this.target.auth_timeout_seconds * 1000;
    try {
      await this.sasl(mechanism, user, accessToken, deadline);
      const buffered = this.reader.detach();
      this.socket.on('error', swallow);
      this.setState('authenticated');
      count('success');
      this.deps.log.debug({ provider: this.provider, mechanism }, 'upstream authenticated');
      return { socket: this.socket, capabilities: this.capabilities, buffered };
    } catch (err) {
      const pe = toProxyError(err);
      // A clean refusal leaves the connection before AUTH; anything else is fatal.
      if (this.state === 'authenticating') this.destroy();
      count(pe.reason);
      this.deps.log.debug(
        { provider: this.provider, mechanism, reason: pe.reason, detail: pe.detail },
        'upstream auth failed',
      );
      throw pe;
    }
  }

  /**
   * `AUTH <mech> <initial response>` when the line fits in 255 octets (RFC 5034 §4), else
   * `AUTH <mech>`, then the response after the `+ ` prompt; a failure challenge answered; until `+OK`.
   */
  private async sasl(mechanism: Mechanism, user: string, token: string, deadline: number): Promise<void> {
    const t = this.target;
    const blob =
      mechanism === 'xoauth2'
        ? xoauth2Blob(user, token)
        : oauthbearerBlob(user, token, t.servername ?? t.host, t.port);
    const withIr = `AUTH ${mechanism.toUpperCase()} ${blob}\r\n`;
    let sent = Buffer.byteLength(withIr) <= POP3_UPSTREAM_LIMITS.authLineOctets;
    this.socket.write(sent ? withIr : `AUTH ${mechanism.toUpperCase()}\r\n`);
    let challenge: SaslFailure | undefined;
    for (let n = 0; n < POP3_UPSTREAM_LIMITS.responsesPerAuth; n++) {
      const r = await this.reader.next(remaining(deadline));
      if (r.status === 'ok') return;
      if (r.status === 'continue') {
        if (!sent) {
          sent = true;
          this.socket.write(`${blob}\r\n`);
          continue;
        }
        if (challenge)
          throw new ProxyError('protocol_error', 'repeated SASL challenge', { detail: 'sasl_loop' });
        challenge = decodeFailureContinuation(r.text);
        this.socket.write(`${failureAck(mechanism)}\r\n`);
        continue;
      }
      const err = classifyAuthErr(r, challenge);
      // IN-USE: the server may close and will refuse again while the other session lasts.
      if (err.reason !== 'mailbox_in_use' && err.reason !== 'protocol_error') this.setState('ready');
      throw err;
    }
    throw new ProxyError('protocol_error', 'SASL exchange too long', { detail: 'sasl_loop' });
  }
}

function readGreeting(g: Pop3Response): void {
  if (g.status === 'ok') return;
  if (g.status === 'err') {
    throw new ProxyError('upstream_unavailable', 'upstream greeted with -ERR', { detail: 'greeting_bye' });
  }
  throw new ProxyError('protocol_error', 'upstream greeting not POP3', { detail: 'greeting_invalid' });
}

/** CAPA (RFC 2449) → its lines; a server without CAPA answers -ERR and has none to offer. */
async function capa(socket: Socket, reader: Pop3ResponseReader, deadline: number): Promise<string[]> {
  socket.write('CAPA\r\n');
  const r = await reader.multiline(remaining(deadline));
  return r.status === 'ok' ? r.lines.map((l) => l.toString('utf8').trim()).filter((l) => l !== '') : [];
}

async function open(target: UpstreamTarget, signal: AbortSignal | undefined) {
  const deadline = Date.now() + target.connect_timeout_seconds * 1000;
  const opts: DialOptions = {
    host: target.host,
    port: target.port,
    tls: target.tls,
    caFile: target.ca_file,
    servername: target.servername,
    timeoutMs: remaining(deadline),
    signal,
  };
  let socket = await dial(opts);
  const onAbort = () => socket.destroy();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let reader = new Pop3ResponseReader(socket);
    const greeting = await reader.next(remaining(deadline)).catch((err: unknown) => {
      if (isProxyError(err) && err.detail === 'unexpected_response') {
        throw new ProxyError('protocol_error', 'upstream greeting not POP3', {
          detail: 'greeting_invalid',
          cause: err,
        });
      }
      throw err;
    });
    readGreeting(greeting);
    let caps = await capa(socket, reader, deadline);
    if (target.tls === 'starttls') {
      const r = await command(socket, reader, 'STLS', deadline);
      if (r.status !== 'ok') {
        throw new ProxyError('upstream_unavailable', 'upstream refused STLS', { detail: 'starttls_refused' });
      }
      // Bytes that arrived in cleartext behind the +OK would be injected into the TLS session.
      if (reader.detach().length > 0) {
        throw new ProxyError('protocol_error', 'upstream sent data after STLS +OK', {
          detail: 'starttls_injection',
        });
      }
      socket = await upgradeTls(socket, { ...opts, timeoutMs: remaining(deadline) });
      reader = new Pop3ResponseReader(socket);
      // What was advertised in cleartext is forgotten (RFC 2595 §4).
      caps = await capa(socket, reader, deadline);
    }
    return { socket, reader, caps };
  } catch (err) {
    socket.destroy();
    if (signal?.aborted)
      throw new ProxyError('timeout', 'upstream connect aborted', { detail: 'aborted', cause: err });
    throw err;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Dials the POP3 server, reads its greeting, CAPA, STLS when configured, CAPA again over TLS. */
export function createPop3UpstreamConnector(deps: ConnectorDeps = {}): UpstreamConnector {
  return measuredConnector(PROTOCOL, deps, async (target, ctx, signal) => {
    const { socket, reader, caps } = await open(target, signal);
    return new Pop3UpstreamConnection(socket, reader, caps, target, ctx.provider, {
      metrics: ctx.metrics,
      log: ctx.log,
    });
  });
}
