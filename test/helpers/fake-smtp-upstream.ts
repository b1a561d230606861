import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext, TLSSocket } from 'node:tls';
import { ensureSelfSigned } from '../../src/net/selfsigned.js';
import { tokenFromBlob } from './fake-upstream.js';

/**
 * A scripted SMTP submission server for the failure shapes of Microsoft 365 and Gmail, which
 * no server that runs here produces (5.7.139, 5.7.3, throttling) and no provider is reachable
 * from here; plus faults a real server will not make on request (injection behind STARTTLS,
 * a frozen server, bytes behind 235). It records every line and every bearer token it sees.
 */

/** How a refused token is answered. */
export type SmtpRejectShape =
  | 'microsoft' // 535 5.7.3 Authentication unsuccessful
  | 'disabled' // Microsoft's 535 5.7.139 (SMTP AUTH disabled for the tenant)
  | 'gmail' // 334 <base64 JSON>, the client's line, then a multi-line 535-5.7.8
  | 'throttle' // 454 4.7.0 Too many login attempts
  | 'shutdown' // 421 4.3.2, then the server closes
  | 'close' // drop the connection mid-auth
  | 'hang'; // never answer

export interface FakeSmtpOptions {
  tls: 'implicit' | 'starttls';
  /** Tokens accepted; 'any' accepts every token. */
  accept: Set<string> | 'any';
  reject: SmtpRejectShape;
  /** SASL mechanisms on the AUTH line (advertised over TLS only, as Microsoft does). */
  mechanisms: string[];
  /** The greeting reply, CRLFs included; 'never' never greets. */
  greeting: string | 'never';
  /** Answer EHLO with 502 (a server that only knows HELO). */
  noEhlo: boolean;
  /** Raw bytes sent in the same write right behind `220 Ready to start TLS`. */
  afterStarttls: string;
  /** Raw bytes sent in the same write right behind `235`. */
  afterAuthOk: string;
}

export interface FakeSmtpUpstream {
  host: string;
  port: number;
  caFile: string;
  options: FakeSmtpOptions;
  /** Every line received, in order, without CRLF (all connections). */
  received: string[];
  /** Bearer tokens out of every AUTH blob, in order. */
  tokens: string[];
  connections: number;
  /** Writes raw bytes to every open session (e.g. an unsolicited 421). */
  sendAll(bytes: string): void;
  close(): Promise<void>;
}

export const FAKE_SMTP_KEYWORDS = [
  'PIPELINING',
  'SIZE 35882577',
  '8BITMIME',
  'ENHANCEDSTATUSCODES',
  'CHUNKING',
];

const GMAIL_JSON = Buffer.from(
  '{"status":"401","schemes":"Bearer","scope":"https://mail.google.com/"}',
).toString('base64');
const BEARER_JSON = Buffer.from('{"status":"invalid_token"}').toString('base64');

function ehloReply(o: FakeSmtpOptions, secure: boolean): string {
  const kw = [...FAKE_SMTP_KEYWORDS];
  kw.splice(1, 0, secure ? `AUTH ${o.mechanisms.join(' ')}` : 'STARTTLS');
  const lines = ['fake.example.com Hello [127.0.0.1]', ...kw];
  return lines.map((l, i) => `250${i === lines.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
}

export async function startFakeSmtpUpstream(opts: Partial<FakeSmtpOptions> = {}): Promise<FakeSmtpUpstream> {
  const options: FakeSmtpOptions = {
    tls: 'implicit',
    accept: 'any',
    reject: 'microsoft',
    mechanisms: ['LOGIN', 'XOAUTH2', 'OAUTHBEARER'],
    greeting: '220 fake.example.com Microsoft ESMTP MAIL Service ready\r\n',
    noEhlo: false,
    afterStarttls: '',
    afterAuthOk: '',
    ...opts,
  };
  const dir = mkdtempSync(join(tmpdir(), 'iop-fake-smtp-'));
  const { certFile, keyFile } = await ensureSelfSigned(dir, { name: 'fake-smtp' });
  const secureContext = createSecureContext({ cert: readFileSync(certFile), key: readFileSync(keyFile) });
  const sockets = new Set<Socket>();
  const writers = new Set<(s: string) => void>();
  const fake: FakeSmtpUpstream = {
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
    /** Set while AUTH waits for a client line: the response to `334 `, or the failure ack. */
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
        send(`235 2.7.0 Authentication successful\r\n${options.afterAuthOk}`);
        return;
      }
      switch (options.reject) {
        case 'microsoft':
          send('535 5.7.3 Authentication unsuccessful [AM0PR01CA0001.eurprd01.prod.example]\r\n');
          return;
        case 'disabled':
          send(
            '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. ' +
              'Visit https://aka.ms/smtp_auth_disabled for more information. [AM0PR01CA0001]\r\n',
          );
          return;
        case 'gmail':
          send(`334 ${mech === 'OAUTHBEARER' ? BEARER_JSON : GMAIL_JSON}\r\n`);
          pending = () =>
            send(
              '535-5.7.8 Username and Password not accepted. For more information, go to\r\n' +
                '535 5.7.8  https://support.google.com/mail/?p=BadCredentials a1-20020a.123 - gsmtp\r\n',
            );
          return;
        case 'throttle':
          send('454 4.7.0 Too many login attempts, please try again later. a1-20020a.123 - gsmtp\r\n');
          return;
        case 'shutdown':
          send('421 4.3.2 Service not available, closing transmission channel\r\n');
          sock.end();
          return;
        case 'close':
          sock.destroy();
          return;
        case 'hang':
          return;
      }
    };

    const command = (line: string) => {
      const [verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (v === 'EHLO') {
        send(options.noEhlo ? '502 5.5.1 Unrecognized command\r\n' : ehloReply(options, secure));
      } else if (v === 'HELO') {
        send('250 fake.example.com\r\n');
      } else if (v === 'STARTTLS' && !secure) {
        send(`220 2.0.0 Ready to start TLS\r\n${options.afterStarttls}`);
        sock.removeListener('data', onData);
        sock = new TLSSocket(sock, { isServer: true, secureContext });
        secure = true;
        buf = '';
        sock.on('data', onData);
        sock.on('error', () => sock.destroy());
      } else if (v === 'AUTH' && !secure) {
        send('530 5.7.0 Must issue a STARTTLS command first\r\n');
      } else if (v === 'AUTH' && !authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        if (args[1] !== undefined) finishAuth(mech, args[1]);
        else {
          send('334 \r\n');
          pending = (l) => finishAuth(mech, l);
        }
      } else if (v === 'QUIT') {
        send('221 2.0.0 Bye\r\n');
        sock.end();
      } else if (v === 'NOOP' || (authenticated && (v === 'MAIL' || v === 'RCPT' || v === 'RSET'))) {
        send('250 2.0.0 OK\r\n');
      } else {
        send('503 5.5.1 Bad sequence of commands\r\n');
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
