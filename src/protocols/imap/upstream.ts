import type { Socket } from 'node:net';
import type { UpstreamConnector, UpstreamTarget } from '../../core/upstream.js';
import { ProxyError } from '../../errors.js';
import { type ConnectorDeps, measuredConnector, remaining } from '../../net/connector.js';
import { type DialOptions, dial, upgradeTls } from '../../net/dial.js';
import { SaslUpstreamConnection } from '../../net/upstream-connection.js';
import {
  classifyAuthNo,
  decodeFailureContinuation,
  failureAck,
  isNotConnected,
  type Mechanism,
  type SaslFailure,
} from '../../sasl/client.js';
import { ResponseReader, type UpstreamResponse } from './reader.js';
import { UPSTREAM_LIMITS } from './upstream-limits.js';

const PROTOCOL = 'imap';

const NOT_CONNECTED_HINT =
  'The mail server accepted the authorization but not for this mailbox: check that the account may ' +
  'open it (Exchange: Add-MailboxPermission / FullAccess) and that IMAP is enabled for the mailbox';

/** `[CAPABILITY a b c] text` → ['a','b','c'], else undefined. */
export function capabilitiesFromCode(text: string): string[] | undefined {
  const list = /^\[CAPABILITY ([^\]]*)\]/i.exec(text)?.[1];
  return list === undefined ? undefined : list.split(' ').filter(Boolean);
}

function hasCap(caps: readonly string[], cap: string): boolean {
  return caps.some((c) => c.toUpperCase() === cap);
}

/** Sends one command and reads until its tagged reply, collecting `* CAPABILITY`. */
async function runCommand(
  socket: Socket,
  reader: ResponseReader,
  tag: string,
  command: string,
  deadline: number,
): Promise<{ tagged: UpstreamResponse; capabilities: string[] | undefined }> {
  socket.write(`${tag} ${command}\r\n`);
  let capabilities: string[] | undefined;
  for (let untagged = 0; untagged <= UPSTREAM_LIMITS.untaggedPerCommand; untagged++) {
    const r = await reader.next(remaining(deadline));
    if (r.tag === tag) return { tagged: r, capabilities: capabilitiesFromCode(r.text) ?? capabilities };
    if (r.tag === '*' && r.kind === 'CAPABILITY') capabilities = r.text.split(' ').filter(Boolean);
    else if (r.tag !== '*') {
      throw new ProxyError('protocol_error', 'unexpected upstream response', {
        detail: 'unexpected_response',
      });
    }
  }
  throw new ProxyError('protocol_error', 'too many untagged upstream responses', {
    detail: 'untagged_flood',
  });
}

class ImapUpstreamConnection extends SaslUpstreamConnection<ResponseReader> {
  private tagSeq = 1;

  protected offeredMechanisms(): readonly string[] {
    return this.capabilities;
  }

  private nextTag(): string {
    return `A${this.tagSeq++}`;
  }

  protected async exchange(mechanism: Mechanism, blob: string, deadline: number): Promise<readonly string[]> {
    const capabilities = await this.sasl(mechanism, blob, deadline);
    if (this.target.post_login_probe || !capabilities) return this.probe(capabilities, deadline);
    return capabilities;
  }

  /** The AUTHENTICATE exchange; returns capabilities from the tagged OK, if it carried them. */
  private async sasl(mechanism: Mechanism, blob: string, deadline: number): Promise<string[] | undefined> {
    const tag = this.nextTag();
    const saslIr = hasCap(this.capabilities, 'SASL-IR');
    // Initial response on the command line only with SASL-IR (RFC 4959); else wait for `+`.
    this.socket.write(`${tag} AUTHENTICATE ${mechanism.toUpperCase()}${saslIr ? ` ${blob}` : ''}\r\n`);
    let sent = saslIr;
    let failure: SaslFailure | undefined;
    let capabilities: string[] | undefined;
    for (let untagged = 0; untagged <= UPSTREAM_LIMITS.untaggedPerCommand; untagged++) {
      const r = await this.reader.next(remaining(deadline));
      if (r.tag === '+') {
        if (!sent) {
          this.socket.write(`${blob}\r\n`);
          sent = true;
        } else if (!failure) {
          failure = decodeFailureContinuation(r.text);
          this.socket.write(`${failureAck(mechanism)}\r\n`);
        } else {
          throw new ProxyError('protocol_error', 'repeated SASL challenge', { detail: 'sasl_loop' });
        }
        continue;
      }
      if (r.tag === '*') {
        if (r.kind === 'CAPABILITY') capabilities = r.text.split(' ').filter(Boolean);
        continue;
      }
      if (r.tag !== tag) {
        throw new ProxyError('protocol_error', 'unexpected upstream tag', { detail: 'unexpected_response' });
      }
      if (r.kind === 'OK') return capabilitiesFromCode(r.text) ?? capabilities;
      if (r.kind === 'NO') {
        const f = classifyAuthNo(r.text, failure);
        this.refused();
        throw new ProxyError(f.reason, 'upstream refused authentication', { detail: f.detail });
      }
      throw new ProxyError('protocol_error', 'upstream answered AUTHENTICATE with BAD', {
        detail: 'auth_bad',
      });
    }
    throw new ProxyError('protocol_error', 'too many untagged upstream responses', {
      detail: 'untagged_flood',
    });
  }

  /**
   * After OK: NOOP (or CAPABILITY when the OK carried none). Microsoft accepts AUTHENTICATE for
   * a mailbox the token may not open and fails the next command with "not connected".
   */
  private async probe(known: string[] | undefined, deadline: number): Promise<string[]> {
    const { tagged, capabilities } = await runCommand(
      this.socket,
      this.reader,
      this.nextTag(),
      known ? 'NOOP' : 'CAPABILITY',
      deadline,
    );
    if (tagged.kind !== 'OK') {
      if (isNotConnected(tagged.text)) {
        throw new ProxyError('authorization_failed', 'upstream: authenticated but not connected', {
          detail: 'not_connected',
          clientText: NOT_CONNECTED_HINT,
        });
      }
      throw new ProxyError('protocol_error', 'upstream refused the post-login command', {
        detail: 'probe_failed',
      });
    }
    const caps = capabilities ?? known;
    if (!caps)
      throw new ProxyError('protocol_error', 'upstream sent no capabilities', { detail: 'no_capability' });
    return caps;
  }
}

/** Greeting → capabilities from its code (possibly none); PREAUTH and BYE are failures. */
function readGreeting(g: UpstreamResponse): string[] | undefined {
  if (g.tag === '*' && g.kind === 'OK') return capabilitiesFromCode(g.text);
  if (g.tag === '*' && g.kind === 'BYE') {
    throw new ProxyError('upstream_unavailable', 'upstream greeted with BYE', { detail: 'greeting_bye' });
  }
  if (g.tag === '*' && g.kind === 'PREAUTH') {
    throw new ProxyError('protocol_error', 'upstream greeted with PREAUTH', { detail: 'greeting_preauth' });
  }
  throw new ProxyError('protocol_error', 'upstream greeting not IMAP', { detail: 'greeting_invalid' });
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
  let reader: ResponseReader | undefined;
  const onAbort = () => socket.destroy();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    reader = new ResponseReader(socket);
    let caps = readGreeting(await reader.next(remaining(deadline)));
    if (target.tls === 'starttls') {
      const { tagged } = await runCommand(socket, reader, 'S1', 'STARTTLS', deadline);
      if (tagged.kind !== 'OK') {
        throw new ProxyError('upstream_unavailable', 'upstream refused STARTTLS', {
          detail: 'starttls_refused',
        });
      }
      // Bytes that arrived in cleartext behind the OK would be injected into the TLS session.
      if (reader.detach().length > 0) {
        throw new ProxyError('protocol_error', 'upstream sent data after STARTTLS OK', {
          detail: 'starttls_injection',
        });
      }
      const plain = socket;
      socket = await upgradeTls(plain, { ...opts, timeoutMs: remaining(deadline) });
      reader = new ResponseReader(socket);
      caps = undefined; // pre-TLS capabilities are not to be trusted (RFC 3501 §6.2.1)
    }
    if (!caps) {
      const r = await runCommand(socket, reader, 'C1', 'CAPABILITY', deadline);
      if (r.tagged.kind !== 'OK' || !r.capabilities) {
        throw new ProxyError('protocol_error', 'upstream CAPABILITY failed', { detail: 'no_capability' });
      }
      caps = r.capabilities;
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

/** Dials upstream, reads the greeting, upgrades with STARTTLS when configured, learns capabilities. */
export function createUpstreamConnector(deps: ConnectorDeps = {}): UpstreamConnector {
  return measuredConnector(PROTOCOL, deps, async (target, ctx, signal) => {
    const { socket, reader, caps } = await open(target, signal);
    return new ImapUpstreamConnection(PROTOCOL, socket, reader, caps, target, ctx);
  });
}
