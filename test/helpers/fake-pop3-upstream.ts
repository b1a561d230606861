import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, TLSSocket } from 'node:tls';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';
import { tokenFromBlob } from './fake-upstream.js';

/**
 * A fake POP3 server (scripted, not a real one) for the shapes of Microsoft 365 and Gmail,
 * which no server that runs here produces and no provider is reachable from here: Microsoft's
 * two-line AUTH and its immediate `-ERR`, IN-USE, SYS/TEMP, throttling, SYS/PERM; plus faults a
 * real server will not make on request (injection behind STLS, a frozen server, bytes behind
 * `+OK`). It records every line and every bearer token it sees.
 */

/** How a refused token is answered. */
export type Pop3RejectShape =
  | 'microsoft' // -ERR Authentication failure: unknown user name or bad password.
  | 'gmail' // + <base64 JSON 401>, the client's line, then -ERR [AUTH]
  | 'forbidden' // + <base64 JSON 400>, the client's line, then -ERR [AUTH]
  | 'in_use' // -ERR [IN-USE] (another session holds the maildrop)
  | 'temp' // -ERR [SYS/TEMP] temporary failure
  | 'throttle' // -ERR [SYS/TEMP] too many logins
  | 'disabled' // -ERR [SYS/PERM] POP access not enabled for the account
  | 'perm' // -ERR [SYS/PERM] with no word about the protocol
  | 'close' // drop the connection mid-auth
  | 'hang'; // never answer

export interface FakePop3Options {
  tls: 'implicit' | 'starttls';
  /** Tokens accepted; 'any' accepts every token. */
  accept: Set<string> | 'any';
  reject: Pop3RejectShape;
  /** SASL mechanisms on the CAPA `SASL` line (advertised over TLS only). */
  mechanisms: string[];
  /** The greeting, CRLF included; 'never' never greets. */
  greeting: string | 'never';
  /** Answer CAPA with -ERR (a pre-RFC 2449 server). */
  noCapa: boolean;
  /** Raw bytes sent in the same write right behind STLS's `+OK`. */
  afterStls: string;
  /** Raw bytes sent in the same write right behind AUTH's `+OK`. */
  afterAuthOk: string;
  /** The one message in the maildrop (RETR 1), CRLF line ends, not yet dot-stuffed. */
  message: string;
}

export interface FakePop3Upstream {
  host: string;
  port: number;
  caFile: string;
  options: FakePop3Options;
  /** Every line received, in order, without CRLF (all connections). */
  received: string[];
  /** Bearer tokens out of every AUTH blob, in order. */
  tokens: string[];
  connections: number;
  /** Writes raw bytes to every open session (e.g. an unsolicited -ERR). */
  sendAll(bytes: string): void;
  close(): Promise<void>;
}

export const FAKE_POP3_CAPA = ['TOP', 'UIDL', 'RESP-CODES', 'PIPELINING', 'AUTH-RESP-CODE', 'USER'];

const json64 = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64');
const GMAIL_JSON = json64({ status: '401', schemes: 'Bearer', scope: 'https://mail.google.com/' });
const FORBIDDEN_JSON = json64({ status: '400', schemes: 'Bearer', scope: 'https://mail.google.com/' });
const BEARER_JSON = json64({ status: 'invalid_token' });

const REFUSALS: Partial<Record<Pop3RejectShape, string>> = {
  microsoft: '-ERR Authentication failure: unknown user name or bad password.\r\n',
  in_use: '-ERR [IN-USE] Unable to lock maildrop: mailbox in use by another session\r\n',
  temp: '-ERR [SYS/TEMP] Temporary authentication failure.\r\n',
  throttle: '-ERR [SYS/TEMP] Too many login attempts, please try again later.\r\n',
  disabled: '-ERR [SYS/PERM] Your account is not enabled for POP access.\r\n',
  perm: '-ERR [SYS/PERM] Account suspended.\r\n',
};

function capaReply(o: FakePop3Options, secure: boolean): string {
  if (o.noCapa) return '-ERR Unknown command\r\n';
  const lines = [...FAKE_POP3_CAPA, secure ? `SASL ${o.mechanisms.join(' ')}` : 'STLS'];
  return `+OK Capability list follows\r\n${lines.map((l) => `${l}\r\n`).join('')}.\r\n`;
}

function stuffed(message: string): string {
  return message.replace(/^\./gm, '..');
}

export async function startFakePop3Upstream(opts: Partial<FakePop3Options> = {}): Promise<FakePop3Upstream> {
  const options: FakePop3Options = {
    tls: 'implicit',
    accept: 'any',
    reject: 'microsoft',
    mechanisms: ['PLAIN', 'XOAUTH2'],
    greeting: '+OK The Microsoft Exchange POP3 service is ready. [UABBADcAUAAyADYANABDAEEAMAAxAA==]\r\n',
    noCapa: false,
    afterStls: '',
    afterAuthOk: '',
    message: 'Subject: hi\r\n\r\n.leading dot\r\nbody\r\n',
    ...opts,
  };
  const dir = mkdtempSync(join(tmpdir(), 'iop-fake-pop3-'));
  const { certFile, keyFile } = await ensureSelfSigned(dir, { name: 'fake-pop3' });
  const secureContext = createSecureContext({ cert: readFileSync(certFile), key: readFileSync(keyFile) });
  const sockets = new Set<Socket>();
  const writers = new Set<(s: string) => void>();
  const fake: FakePop3Upstream = {
    host: '127.0.0.1',
    port: 0,
    caFile: certFile,
    options,
    received: [],
    tokens: [],
    connections: 0,
    sendAll: (bytes) => {
      for (const w of writers) w(bytes);
    },
    close,
  };

  function session(raw: Socket): void {
    fake.connections++;
    let sock: Socket =
      options.tls === 'implicit' ? new TLSSocket(raw, { isServer: true, secureContext }) : raw;
    let secure = options.tls === 'implicit';
    let buf = '';
    let authenticated = false;
    /** Set while AUTH waits for a client line: the response to `+ `, or the failure ack. */
    let pending: ((line: string) => void) | undefined;
    const send = (s: string) => {
      if (!sock.destroyed) sock.write(s);
    };
    writers.add(send);

    const finishAuth = (mech: string, blob: string) => {
      const token = tokenFromBlob(blob);
      if (token !== undefined) fake.tokens.push(token);
      if (token !== undefined && (options.accept === 'any' || options.accept.has(token))) {
        authenticated = true;
        send(`+OK Logged in.\r\n${options.afterAuthOk}`);
        return;
      }
      const r = options.reject;
      if (r === 'gmail' || r === 'forbidden') {
        send(`+ ${mech === 'OAUTHBEARER' ? BEARER_JSON : r === 'gmail' ? GMAIL_JSON : FORBIDDEN_JSON}\r\n`);
        pending = () => send('-ERR [AUTH] Invalid credentials (Failure)\r\n');
      } else if (r === 'close') sock.destroy();
      else if (r !== 'hang') send(REFUSALS[r] ?? '-ERR\r\n');
    };

    const command = (line: string) => {
      const [verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (v === 'CAPA') send(capaReply(options, secure));
      else if (v === 'STLS' && !secure) {
        send(`+OK Begin TLS negotiation now.\r\n${options.afterStls}`);
        sock.removeListener('data', onData);
        sock = new TLSSocket(sock, { isServer: true, secureContext });
        secure = true;
        buf = '';
        sock.on('data', onData);
        sock.on('error', () => sock.destroy());
      } else if (v === 'AUTH' && !secure) send('-ERR [AUTH] Use STLS first\r\n');
      else if (v === 'AUTH' && !authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        if (args[1] !== undefined) finishAuth(mech, args[1]);
        else {
          send('+ \r\n');
          pending = (l) => finishAuth(mech, l);
        }
      } else if (v === 'STAT' && authenticated) send(`+OK 1 ${options.message.length}\r\n`);
      else if (v === 'RETR' && authenticated && args[0] === '1') {
        send(`+OK ${options.message.length} octets\r\n${stuffed(options.message)}.\r\n`);
      } else if (v === 'QUIT') {
        send('+OK Bye\r\n');
        sock.end();
      } else if (v === 'NOOP' && authenticated) send('+OK\r\n');
      else send('-ERR Unknown command\r\n');
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
    raw.once('close', () => {
      sockets.delete(raw);
      writers.delete(send);
    });
    sock.on('data', onData);
    sock.on('error', () => sock.destroy());
    raw.on('error', () => raw.destroy());
    if (options.greeting !== 'never') send(options.greeting);
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
