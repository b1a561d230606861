import type { FaultShape, LineServer, LineServerSettings } from './fake-line-server.js';
import { gmailChallenge, LINE_DEFAULTS, startLineServer } from './fake-line-server.js';

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
  | FaultShape;

export interface FakePop3Options extends LineServerSettings {
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

export interface FakePop3Upstream extends LineServer {
  options: FakePop3Options;
}

export const FAKE_POP3_CAPA = ['TOP', 'UIDL', 'RESP-CODES', 'PIPELINING', 'AUTH-RESP-CODE', 'USER'];

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
    ...LINE_DEFAULTS,
    reject: 'microsoft',
    mechanisms: ['PLAIN', 'XOAUTH2'],
    greeting: '+OK The Microsoft Exchange POP3 service is ready. [UABBADcAUAAyADYANABDAEEAMAAxAA==]\r\n',
    noCapa: false,
    afterStls: '',
    afterAuthOk: '',
    message: 'Subject: hi\r\n\r\n.leading dot\r\nbody\r\n',
    ...opts,
  };
  const server = await startLineServer('fake-pop3', options, (s) => {
    const refuse = (mech: string) => {
      const r = options.reject;
      if (r === 'gmail' || r === 'forbidden') {
        s.send(`+ ${gmailChallenge(mech, r === 'gmail' ? '401' : '400')}\r\n`);
        s.next(() => s.send('-ERR [AUTH] Invalid credentials (Failure)\r\n'));
      } else if (r === 'close' || r === 'hang') s.fault(r);
      else s.send(REFUSALS[r] ?? '-ERR\r\n');
    };

    if (options.greeting !== 'never') s.send(options.greeting);
    return (line) => {
      const [verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (v === 'CAPA') s.send(capaReply(options, s.secure));
      else if (v === 'STLS' && !s.secure)
        s.startTls(`+OK Begin TLS negotiation now.\r\n${options.afterStls}`);
      else if (v === 'AUTH' && !s.secure) s.send('-ERR [AUTH] Use STLS first\r\n');
      else if (v === 'AUTH' && !s.authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        s.saslResponse(args[1], '+ \r\n', (blob) =>
          s.login(blob, `+OK Logged in.\r\n${options.afterAuthOk}`, () => refuse(mech)),
        );
      } else if (v === 'STAT' && s.authenticated) s.send(`+OK 1 ${options.message.length}\r\n`);
      else if (v === 'RETR' && s.authenticated && args[0] === '1') {
        s.send(`+OK ${options.message.length} octets\r\n${stuffed(options.message)}.\r\n`);
      } else if (v === 'QUIT') {
        s.send('+OK Bye\r\n');
        s.end();
      } else if (v === 'NOOP' && s.authenticated) s.send('+OK\r\n');
      else s.send('-ERR Unknown command\r\n');
    };
  });
  return Object.assign(server, { options });
}
