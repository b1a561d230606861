import type { Socket } from 'node:net';
import type { UpstreamConnector, UpstreamTarget } from '../../core/upstream.js';
import { isProxyError, ProxyError } from '../../errors.js';
import { type ConnectorDeps, measuredConnector, remaining } from '../../net/connector.js';
import { type DialOptions, dial, upgradeTls } from '../../net/dial.js';
import { SaslUpstreamConnection, saslMechanisms } from '../../net/upstream-connection.js';
import {
  classifyAuthNo,
  decodeFailureContinuation,
  failureAck,
  type Mechanism,
  type SaslFailure,
} from '../../sasl/client.js';
import { type Pop3Response, Pop3ResponseReader } from './response-reader.js';
import { POP3_UPSTREAM_LIMITS } from './upstream-limits.js';

const PROTOCOL = 'pop3';

export const POP3_DISABLED_HINT =
  'POP3 is disabled for this mailbox at the provider; the administrator must enable it ' +
  '(Exchange: Set-CASMailbox -PopEnabled $true; Gmail: Settings, Forwarding and POP/IMAP, Enable POP)';

/** Provider wording of a temporary refusal that is about rate, not an outage. */
const THROTTLED = /too many|throttl|rate limit|exceeded/i;
/** `[SYS/PERM]` wording that says the protocol itself is switched off for the mailbox. */
const DISABLED = /not enabled|disabled|not allowed|not permitted/i;

/** CAPA `SASL A B` → ['AUTH=A','AUTH=B'], the form pickMechanism reads. */
export function saslCapabilities(capa: readonly string[]): string[] {
  return saslMechanisms(capa, /^SASL(?: (.*))?$/i);
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
        return new ProxyError('protocol_disabled', msg, {
          detail: 'pop_disabled',
          clientText: POP3_DISABLED_HINT,
        });
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

class Pop3UpstreamConnection extends SaslUpstreamConnection<Pop3ResponseReader> {
  protected offeredMechanisms(): readonly string[] {
    return saslCapabilities(this.capabilities);
  }

  /**
   * `AUTH <mech> <initial response>` when the line fits in 255 octets (RFC 5034 §4), else
   * `AUTH <mech>`, then the response after the `+ ` prompt; a failure challenge answered; until `+OK`.
   */
  protected async exchange(mechanism: Mechanism, blob: string, deadline: number): Promise<undefined> {
    const withIr = `AUTH ${mechanism.toUpperCase()} ${blob}\r\n`;
    let sent = Buffer.byteLength(withIr) <= POP3_UPSTREAM_LIMITS.authLineOctets;
    this.socket.write(sent ? withIr : `AUTH ${mechanism.toUpperCase()}\r\n`);
    let challenge: SaslFailure | undefined;
    for (let n = 0; n < POP3_UPSTREAM_LIMITS.responsesPerAuth; n++) {
      const r = await this.reader.next(remaining(deadline));
      if (r.status === 'ok') return undefined;
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
      if (err.reason !== 'mailbox_in_use' && err.reason !== 'protocol_error') this.refused();
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
    return new Pop3UpstreamConnection(PROTOCOL, socket, reader, caps, target, ctx);
  });
}
