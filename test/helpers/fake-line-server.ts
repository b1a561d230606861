import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, TLSSocket } from 'node:tls';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';

/**
 * The plumbing the scripted fake upstreams (IMAP, SMTP, POP3) share: a listener on 127.0.0.1:0
 * with its own self-signed certificate, implicit TLS or an upgrade on command, CRLF lines
 * recorded and handed to the protocol's script, the bearer tokens it saw, and a close that ends
 * every session. The script only says what each command is answered with.
 */

/** Refusals every fake can script: drop the connection mid-AUTH, or never answer. */
export type FaultShape = 'close' | 'hang';

/** Settings the server reads from the fake's own options, when they matter. */
export interface LineServerSettings {
  tls: 'implicit' | 'starttls';
  /** Tokens accepted; 'any' accepts every token. */
  accept: Set<string> | 'any';
}

/** One client connection, as a protocol's script sees it. */
export interface LineSession {
  /** TLS is on (implicit, or after the upgrade). */
  readonly secure: boolean;
  /** A bearer token was accepted on this connection. */
  readonly authenticated: boolean;
  send(bytes: string): void;
  /** The next client line goes to `fn` instead of the command handler. */
  next(fn: (line: string) => void): void;
  /** Writes `reply` (and whatever a test injects behind it), then speaks TLS; unread cleartext is dropped. */
  startTls(reply: string): void;
  /** A SASL response: `initial` if the command carried one, else the next line after `prompt`. */
  saslResponse(initial: string | undefined, prompt: string, fn: (blob: string) => void): void;
  /** Logs in with `ok` if the bearer token in an XOAUTH2 / OAUTHBEARER response is accepted, else `refuse`s; every token is recorded. */
  login(blob: string, ok: string, refuse: () => void): void;
  /** Scripts a fault: `close` drops the connection, `hang` leaves the client waiting. */
  fault(shape: FaultShape): void;
  end(): void;
  destroy(): void;
}

export interface LineServer {
  host: string;
  port: number;
  caFile: string;
  /** Every line received, in order, without CRLF (all connections). */
  received: string[];
  /** Bearer tokens out of every AUTH blob, in order. */
  tokens: string[];
  /** Connections accepted so far. */
  connections: number;
  /** Writes raw bytes to every open session (e.g. an unsolicited reply). */
  sendAll(bytes: string): void;
  close(): Promise<void>;
}

/** The settings' defaults: implicit TLS, every token accepted. */
export const LINE_DEFAULTS: LineServerSettings = { tls: 'implicit', accept: 'any' };

/**
 * The base64 JSON challenge Gmail sends when it refuses a token: `status` and `schemes` for
 * XOAUTH2, RFC 7628's invalid_token for OAUTHBEARER.
 */
export function gmailChallenge(mech: string, status = '401', schemes = 'Bearer'): string {
  const json =
    mech === 'OAUTHBEARER'
      ? { status: 'invalid_token' }
      : { status, schemes, scope: 'https://mail.google.com/' };
  return Buffer.from(JSON.stringify(json)).toString('base64');
}

/** Bearer token out of an XOAUTH2 or OAUTHBEARER initial response. */
function tokenFromBlob(b64: string): string | undefined {
  const text = Buffer.from(b64, 'base64').toString('utf8');
  return /\x01auth=Bearer ([^\x01]*)\x01/.exec(text)?.[1];
}

/**
 * Listens on 127.0.0.1:0; for each connection `script` greets if it will and returns the
 * handler of command lines. `settings` is read when it matters, so a test may change it.
 */
export async function startLineServer(
  name: string,
  settings: LineServerSettings,
  script: (s: LineSession) => (line: string) => void,
): Promise<LineServer> {
  const dir = mkdtempSync(join(tmpdir(), `iop-${name}-`));
  const { certFile, keyFile } = await ensureSelfSigned(dir, { name });
  // One context for all sessions so its ticket keys let clients resume TLS sessions.
  const secureContext = createSecureContext({ cert: readFileSync(certFile), key: readFileSync(keyFile) });
  const sockets = new Set<Socket>();
  const writers = new Set<(s: string) => void>();
  const server: Server = createServer(session);
  const fake: LineServer = {
    host: '127.0.0.1',
    port: 0,
    caFile: certFile,
    received: [],
    tokens: [],
    connections: 0,
    sendAll: (bytes) => {
      for (const w of writers) w(bytes);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
      rmSync(dir, { recursive: true, force: true });
    },
  };

  function session(raw: Socket): void {
    fake.connections++;
    let secure = settings.tls === 'implicit';
    let authenticated = false;
    let sock: Socket = secure ? new TLSSocket(raw, { isServer: true, secureContext }) : raw;
    let buf = '';
    /** Set while a command waits for a client line: a SASL response, or the ack of a failure. */
    let pending: ((line: string) => void) | undefined;
    const send = (bytes: string) => {
      if (!sock.destroyed) sock.write(bytes);
    };
    const s: LineSession = {
      get secure() {
        return secure;
      },
      get authenticated() {
        return authenticated;
      },
      send,
      next: (fn) => {
        pending = fn;
      },
      startTls: (reply) => {
        send(reply);
        sock.removeListener('data', onData);
        sock = new TLSSocket(sock, { isServer: true, secureContext });
        secure = true;
        buf = '';
        sock.on('data', onData);
        sock.on('error', () => sock.destroy());
      },
      saslResponse: (initial, prompt, fn) => {
        if (initial !== undefined) return fn(initial);
        send(prompt);
        pending = fn;
      },
      login: (blob, ok, refuse) => {
        const token = tokenFromBlob(blob);
        if (token !== undefined) fake.tokens.push(token);
        authenticated = token !== undefined && (settings.accept === 'any' || settings.accept.has(token));
        if (authenticated) send(ok);
        else refuse();
      },
      fault: (shape) => {
        if (shape === 'close') sock.destroy();
      },
      end: () => sock.end(),
      destroy: () => sock.destroy(),
    };
    const command = script(s);

    function onData(d: Buffer): void {
      buf += d.toString('utf8');
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        fake.received.push(line);
        const p = pending;
        pending = undefined;
        (p ?? command)(line);
      }
    }

    writers.add(send);
    sockets.add(raw);
    raw.once('close', () => {
      sockets.delete(raw);
      writers.delete(send);
    });
    sock.on('data', onData);
    sock.on('error', () => sock.destroy());
    raw.on('error', () => raw.destroy());
  }

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  fake.port = typeof addr === 'object' && addr ? addr.port : 0;
  return fake;
}
