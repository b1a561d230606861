import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, TLSSocket } from 'node:tls';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';

/**
 * A small scripted IMAP server for fault injection a real Dovecot cannot do: Gmail- and
 * Microsoft-shaped failures, throttling, slow greetings, a close mid-auth. It records every
 * line it receives so tests can assert the SASL blob byte for byte. Light enough to hold
 * thousands of idle sessions (IDLE answers `+ idling` and holds).
 */

/** How a refused token is answered. */
export type RejectShape =
  | 'gmail' // `+ <base64 {"status":"401",…}>`, wait for the client's line, then NO
  | 'microsoft' // immediate `NO AUTHENTICATE failed.`
  | 'throttle' // `NO [UNAVAILABLE] Request is throttled…`
  | 'close' // drop the connection mid-auth
  | 'hang'; // never answer

export interface FakeUpstreamOptions {
  tls: 'implicit' | 'starttls';
  /** Tokens accepted; 'any' accepts every token. */
  accept: Set<string> | 'any';
  reject: RejectShape;
  saslIr: boolean;
  /** AUTH= mechanisms advertised. */
  mechanisms: string[];
  /** Put [CAPABILITY …] in the greeting and the login OK. */
  capabilityInGreeting: boolean;
  capabilityInLoginOk: boolean;
  /** Accept AUTHENTICATE, then fail every command with Microsoft's "not connected" BAD. */
  notConnected: boolean;
  /** Delay before the greeting; 'never' never greets. */
  greetingDelayMs: number | 'never';
  /** Raw bytes sent right after the login OK (to test hand-over of buffered bytes). */
  afterLoginOk: string;
}

export interface FakeUpstream {
  host: string;
  port: number;
  caFile: string;
  options: FakeUpstreamOptions;
  /** Every line received, in order, without CRLF (all connections). */
  received: string[];
  /** Connections accepted so far. */
  connections: number;
  close(): Promise<void>;
}

const POST_LOGIN_CAPS = 'IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS MOVE';
const GMAIL_JSON = Buffer.from(
  '{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}',
).toString('base64');

function preAuthCaps(o: FakeUpstreamOptions, secure: boolean): string {
  const caps = ['IMAP4rev1', 'LITERAL+', 'ID', 'ENABLE', 'IDLE'];
  if (o.saslIr) caps.push('SASL-IR');
  if (!secure) caps.push('STARTTLS', 'LOGINDISABLED');
  else caps.push(...o.mechanisms.map((m) => `AUTH=${m}`));
  return caps.join(' ');
}

/** Bearer token out of an XOAUTH2 or OAUTHBEARER initial response. */
export function tokenFromBlob(b64: string): string | undefined {
  const text = Buffer.from(b64, 'base64').toString('utf8');
  return /\x01auth=Bearer ([^\x01]*)\x01/.exec(text)?.[1];
}

export async function startFakeUpstream(opts: Partial<FakeUpstreamOptions> = {}): Promise<FakeUpstream> {
  const options: FakeUpstreamOptions = {
    tls: 'implicit',
    accept: 'any',
    reject: 'gmail',
    saslIr: true,
    mechanisms: ['XOAUTH2', 'OAUTHBEARER'],
    capabilityInGreeting: true,
    capabilityInLoginOk: true,
    notConnected: false,
    greetingDelayMs: 0,
    afterLoginOk: '',
    ...opts,
  };
  const dir = mkdtempSync(join(tmpdir(), 'iop-fake-'));
  const { certFile, keyFile } = await ensureSelfSigned(dir, { name: 'fake' });
  const cert = readFileSync(certFile);
  const key = readFileSync(keyFile);
  // One context for all sessions so its ticket keys let clients resume TLS sessions.
  const secureContext = createSecureContext({ cert, key });
  const sockets = new Set<Socket>();
  const fake: FakeUpstream = {
    host: '127.0.0.1',
    port: 0,
    caFile: certFile,
    options,
    received: [],
    connections: 0,
    close,
  };

  function session(raw: Socket): void {
    fake.connections++;
    let sock: Socket =
      options.tls === 'implicit' ? new TLSSocket(raw, { isServer: true, secureContext }) : raw;
    let secure = options.tls === 'implicit';
    let buf = '';
    let authenticated = false;
    /** Set while an AUTHENTICATE waits for a client line: the initial response or the failure ack. */
    let pending: ((line: string) => void) | undefined;
    const send = (s: string) => sock.write(s);

    const greet = () => {
      if (sock.destroyed) return;
      const code = options.capabilityInGreeting ? `[CAPABILITY ${preAuthCaps(options, secure)}] ` : '';
      send(`* OK ${code}fake IMAP ready\r\n`);
    };

    const finishAuth = (tag: string, mech: string, blob: string) => {
      const token = tokenFromBlob(blob);
      const ok = token !== undefined && (options.accept === 'any' || options.accept.has(token));
      if (ok) {
        authenticated = true;
        const code = options.capabilityInLoginOk ? `[CAPABILITY ${POST_LOGIN_CAPS}] ` : '';
        send(`${tag} OK ${code}Logged in\r\n${options.afterLoginOk}`);
        return;
      }
      switch (options.reject) {
        case 'gmail': {
          const json =
            mech === 'OAUTHBEARER'
              ? Buffer.from('{"status":"invalid_token"}').toString('base64')
              : GMAIL_JSON;
          send(`+ ${json}\r\n`);
          pending = () => send(`${tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n`);
          return;
        }
        case 'microsoft':
          send(`${tag} NO AUTHENTICATE failed.\r\n`);
          return;
        case 'throttle':
          send(`${tag} NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 1000 milliseconds\r\n`);
          return;
        case 'close':
          sock.destroy();
          return;
        case 'hang':
          return;
      }
    };

    const command = (line: string) => {
      const [tag = '', verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (authenticated && options.notConnected && v !== 'LOGOUT') {
        send(`${tag} BAD User is authenticated but not connected.\r\n`);
        return;
      }
      if (v === 'CAPABILITY') {
        send(
          `* CAPABILITY ${authenticated ? POST_LOGIN_CAPS : preAuthCaps(options, secure)}\r\n${tag} OK done\r\n`,
        );
      } else if (v === 'NOOP') {
        send(`${tag} OK NOOP completed\r\n`);
      } else if (v === 'STARTTLS' && !secure) {
        send(`${tag} OK Begin TLS\r\n`);
        sock.removeListener('data', onData);
        sock = new TLSSocket(sock, { isServer: true, secureContext });
        secure = true;
        sock.on('data', onData);
        sock.on('error', () => sock.destroy());
      } else if (v === 'AUTHENTICATE' && secure && !authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        if (args[1] !== undefined) finishAuth(tag, mech, args[1]);
        else {
          send('+ \r\n');
          pending = (l) => finishAuth(tag, mech, l);
        }
      } else if (v === 'IDLE' && authenticated) {
        send('+ idling\r\n');
        pending = () => send(`${tag} OK IDLE terminated\r\n`);
      } else if (v === 'LOGOUT') {
        send(`* BYE logging out\r\n${tag} OK LOGOUT completed\r\n`);
        sock.end();
      } else if (authenticated) {
        send(`${tag} OK ${v} completed\r\n`);
      } else {
        send(`${tag} BAD command not allowed now\r\n`);
      }
    };

    function onData(d: Buffer): void {
      buf += d.toString('utf8');
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i).replace(/\r$/, '');
        buf = buf.slice(i + 1);
        fake.received.push(line);
        const p = pending;
        pending = undefined;
        if (p) p(line);
        else command(line);
      }
    }

    sockets.add(raw);
    raw.once('close', () => sockets.delete(raw));
    sock.on('data', onData);
    sock.on('error', () => sock.destroy());
    raw.on('error', () => raw.destroy());
    if (options.greetingDelayMs === 'never') return;
    if (options.greetingDelayMs === 0) greet();
    // A deliberately slow server, not synchronisation: the delay is what the test is about.
    else setTimeout(greet, options.greetingDelayMs).unref();
  }

  const server: Server = createServer(session);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  fake.port = typeof addr === 'object' && addr ? addr.port : 0;

  async function close(): Promise<void> {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  }
  return fake;
}
