import type { FaultShape, LineServer, LineServerSettings } from './fake-line-server.js';
import { gmailChallenge, LINE_DEFAULTS, startLineServer } from './fake-line-server.js';

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
  | FaultShape;

export interface FakeSmtpOptions extends LineServerSettings {
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

export interface FakeSmtpUpstream extends LineServer {
  options: FakeSmtpOptions;
}

export const FAKE_SMTP_KEYWORDS = [
  'PIPELINING',
  'SIZE 35882577',
  '8BITMIME',
  'ENHANCEDSTATUSCODES',
  'CHUNKING',
];

function ehloReply(o: FakeSmtpOptions, secure: boolean): string {
  const kw = [...FAKE_SMTP_KEYWORDS];
  kw.splice(1, 0, secure ? `AUTH ${o.mechanisms.join(' ')}` : 'STARTTLS');
  const lines = ['fake.example.com Hello [127.0.0.1]', ...kw];
  return lines.map((l, i) => `250${i === lines.length - 1 ? ' ' : '-'}${l}\r\n`).join('');
}

export async function startFakeSmtpUpstream(opts: Partial<FakeSmtpOptions> = {}): Promise<FakeSmtpUpstream> {
  const options: FakeSmtpOptions = {
    ...LINE_DEFAULTS,
    reject: 'microsoft',
    mechanisms: ['LOGIN', 'XOAUTH2', 'OAUTHBEARER'],
    greeting: '220 fake.example.com Microsoft ESMTP MAIL Service ready\r\n',
    noEhlo: false,
    afterStarttls: '',
    afterAuthOk: '',
    ...opts,
  };
  const server = await startLineServer('fake-smtp', options, (s) => {
    const refuse = (mech: string) => {
      switch (options.reject) {
        case 'microsoft':
          s.send('535 5.7.3 Authentication unsuccessful [AM0PR01CA0001.eurprd01.prod.example]\r\n');
          return;
        case 'disabled':
          s.send(
            '535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. ' +
              'Visit https://aka.ms/smtp_auth_disabled for more information. [AM0PR01CA0001]\r\n',
          );
          return;
        case 'gmail':
          s.send(`334 ${gmailChallenge(mech)}\r\n`);
          s.next(() =>
            s.send(
              '535-5.7.8 Username and Password not accepted. For more information, go to\r\n' +
                '535 5.7.8  https://support.google.com/mail/?p=BadCredentials a1-20020a.123 - gsmtp\r\n',
            ),
          );
          return;
        case 'throttle':
          s.send('454 4.7.0 Too many login attempts, please try again later. a1-20020a.123 - gsmtp\r\n');
          return;
        case 'shutdown':
          s.send('421 4.3.2 Service not available, closing transmission channel\r\n');
          s.end();
          return;
        default:
          s.fault(options.reject);
      }
    };

    if (options.greeting !== 'never') s.send(options.greeting);
    return (line) => {
      const [verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (v === 'EHLO') {
        s.send(options.noEhlo ? '502 5.5.1 Unrecognized command\r\n' : ehloReply(options, s.secure));
      } else if (v === 'HELO') {
        s.send('250 fake.example.com\r\n');
      } else if (v === 'STARTTLS' && !s.secure) {
        s.startTls(`220 2.0.0 Ready to start TLS\r\n${options.afterStarttls}`);
      } else if (v === 'AUTH' && !s.secure) {
        s.send('530 5.7.0 Must issue a STARTTLS command first\r\n');
      } else if (v === 'AUTH' && !s.authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        s.saslResponse(args[1], '334 \r\n', (blob) =>
          s.login(blob, `235 2.7.0 Authentication successful\r\n${options.afterAuthOk}`, () => refuse(mech)),
        );
      } else if (v === 'QUIT') {
        s.send('221 2.0.0 Bye\r\n');
        s.end();
      } else if (v === 'NOOP' || (s.authenticated && (v === 'MAIL' || v === 'RCPT' || v === 'RSET'))) {
        s.send('250 2.0.0 OK\r\n');
      } else {
        s.send('503 5.5.1 Bad sequence of commands\r\n');
      }
    };
  });
  return Object.assign(server, { options });
}
