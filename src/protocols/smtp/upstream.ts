import type { Socket } from 'node:net';
import { hostname } from 'node:os';
import type { UpstreamConnector, UpstreamTarget } from '../../core/upstream.js';
import { isProxyError, ProxyError } from '../../errors.js';
import { type ConnectorDeps, measuredConnector, remaining } from '../../net/connector.js';
import { type DialOptions, dial, upgradeTls } from '../../net/dial.js';
import { SaslUpstreamConnection, saslMechanisms } from '../../net/upstream-connection.js';
import {
  decodeFailureContinuation,
  failureAck,
  type Mechanism,
  type SaslFailure,
} from '../../sasl/client.js';
import { ReplyReader, type SmtpReply } from './reply-reader.js';
import { SMTP_UPSTREAM_LIMITS } from './upstream-limits.js';

const PROTOCOL = 'smtp';

export const SMTP_AUTH_DISABLED_HINT =
  'SMTP AUTH is disabled for this mailbox or tenant at the provider; the administrator must enable ' +
  'authenticated SMTP (Exchange: Set-CASMailbox -SmtpClientAuthenticationDisabled $false)';

/** Provider wording of a temporary refusal that is about rate, not an outage. */
const THROTTLED = /too many|throttl|rate limit|exceeded/i;

/** EHLO `AUTH A B` (or the old `AUTH=A B`) → ['AUTH=A','AUTH=B'], the form pickMechanism reads. */
export function saslCapabilities(keywords: readonly string[]): string[] {
  return saslMechanisms(keywords, /^AUTH[ =](.*)$/i);
}

/** The RFC 3463 enhanced status code that starts a reply line (RFC 2034), e.g. '5.7.139'. */
export function enhancedCode(line: string): string | undefined {
  return /^([245]\.\d{1,3}\.\d{1,3})(?: |$)/.exec(line)?.[1];
}

/**
 * The final reply to AUTH, when it is not 235, as a ProxyError. 535 is a refused token (one
 * retry with a fresh token may help); 5.7.139 is Microsoft's "SMTP AUTH disabled", which no
 * token fixes; 4xx is temporary; 534 and other 5.7.x policy refusals need the account fixed;
 * anything else means the two sides do not understand each other.
 */
export function classifyAuthReply(reply: SmtpReply, challenge: SaslFailure | undefined): ProxyError {
  const text = reply.lines.join(' ');
  const enhanced = enhancedCode(reply.lines[0] ?? '');
  const msg = `upstream refused AUTH with ${reply.code}${enhanced ? ` ${enhanced}` : ''}`;
  if (enhanced === '5.7.139' || /SmtpClientAuthentication is disabled/i.test(text)) {
    return new ProxyError('protocol_disabled', msg, {
      detail: 'smtp_auth_disabled',
      clientText: SMTP_AUTH_DISABLED_HINT,
    });
  }
  if (reply.code >= 400 && reply.code < 500) {
    return new ProxyError('upstream_unavailable', msg, {
      detail: THROTTLED.test(text) ? 'throttled' : 'temporary',
    });
  }
  if (reply.code === 535) {
    const f: SaslFailure = challenge ?? { reason: 'upstream_rejected', detail: 'no' };
    return new ProxyError(f.reason, msg, { detail: f.detail });
  }
  // 530/538: the server wants TLS or another step first; the connector always authenticates over TLS.
  const wantsTls = reply.code === 530 || reply.code === 538;
  if (reply.code === 534 || (!wantsTls && enhanced?.startsWith('5.7.'))) {
    return new ProxyError('authorization_failed', msg, { detail: challenge?.detail ?? 'no' });
  }
  return new ProxyError('protocol_error', msg, { detail: 'auth_bad' });
}

async function command(socket: Socket, reader: ReplyReader, line: string, deadline: number) {
  socket.write(`${line}\r\n`);
  return reader.next(remaining(deadline));
}

class SmtpUpstreamConnection extends SaslUpstreamConnection<ReplyReader> {
  protected offeredMechanisms(): readonly string[] {
    return saslCapabilities(this.capabilities);
  }

  /** `AUTH <mech> <initial response>` (RFC 4954), a failure challenge answered, until 235. */
  protected async exchange(mechanism: Mechanism, blob: string, deadline: number): Promise<undefined> {
    // Always the initial response: providers accept the long line a 12 KB token makes.
    this.socket.write(`AUTH ${mechanism.toUpperCase()} ${blob}\r\n`);
    let challenge: SaslFailure | undefined;
    for (let n = 0; n < SMTP_UPSTREAM_LIMITS.repliesPerAuth; n++) {
      const r = await this.reader.next(remaining(deadline));
      if (r.code === 235) return undefined;
      if (r.code === 334) {
        if (challenge)
          throw new ProxyError('protocol_error', 'repeated SASL challenge', { detail: 'sasl_loop' });
        challenge = decodeFailureContinuation(r.lines.join(''));
        this.socket.write(`${failureAck(mechanism)}\r\n`);
        continue;
      }
      const err = classifyAuthReply(r, challenge);
      // 421: the server closes the connection; a protocol error leaves nothing worth reusing.
      if (r.code !== 421 && err.reason !== 'protocol_error') this.refused();
      throw err;
    }
    throw new ProxyError('protocol_error', 'SASL exchange too long', { detail: 'sasl_loop' });
  }
}

function readGreeting(g: SmtpReply): void {
  if (g.code === 220) return;
  if (g.code >= 400 && g.code < 600) {
    throw new ProxyError('upstream_unavailable', `upstream greeted with ${g.code}`, {
      detail: 'greeting_bye',
    });
  }
  throw new ProxyError('protocol_error', 'upstream greeting not SMTP', { detail: 'greeting_invalid' });
}

/** EHLO → the keyword lines (the first line is the server's domain, not a keyword). */
async function ehlo(socket: Socket, reader: ReplyReader, name: string, deadline: number): Promise<string[]> {
  const r = await command(socket, reader, `EHLO ${name}`, deadline);
  if (r.code === 250) return r.lines.slice(1);
  // No HELO fallback: a server without EHLO has no AUTH extension (RFC 4954).
  if (r.code >= 400 && r.code < 500) {
    throw new ProxyError('upstream_unavailable', `upstream answered EHLO with ${r.code}`, {
      detail: 'temporary',
    });
  }
  throw new ProxyError('protocol_error', `upstream refused EHLO with ${r.code}`, { detail: 'no_capability' });
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
  const name = target.ehlo_name ?? hostname();
  let socket = await dial(opts);
  const onAbort = () => socket.destroy();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    let reader = new ReplyReader(socket);
    const greeting = await reader.next(remaining(deadline)).catch((err: unknown) => {
      if (isProxyError(err) && err.detail === 'unexpected_response') {
        throw new ProxyError('protocol_error', 'upstream greeting not SMTP', {
          detail: 'greeting_invalid',
          cause: err,
        });
      }
      throw err;
    });
    readGreeting(greeting);
    let caps = await ehlo(socket, reader, name, deadline);
    if (target.tls === 'starttls') {
      const r = await command(socket, reader, 'STARTTLS', deadline);
      if (r.code !== 220) {
        throw new ProxyError('upstream_unavailable', `upstream refused STARTTLS with ${r.code}`, {
          detail: 'starttls_refused',
        });
      }
      // Bytes that arrived in cleartext behind the 220 would be injected into the TLS session.
      if (reader.detach().length > 0) {
        throw new ProxyError('protocol_error', 'upstream sent data after STARTTLS 220', {
          detail: 'starttls_injection',
        });
      }
      socket = await upgradeTls(socket, { ...opts, timeoutMs: remaining(deadline) });
      reader = new ReplyReader(socket);
      // What was advertised in cleartext is forgotten (RFC 3207 §4.2).
      caps = await ehlo(socket, reader, name, deadline);
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

/** Dials the SMTP submission server, EHLO, STARTTLS when configured, EHLO again over TLS. */
export function createSmtpUpstreamConnector(deps: ConnectorDeps = {}): UpstreamConnector {
  return measuredConnector(PROTOCOL, deps, async (target, ctx, signal) => {
    const { socket, reader, caps } = await open(target, signal);
    return new SmtpUpstreamConnection(PROTOCOL, socket, reader, caps, target, ctx);
  });
}
