import type { FaultShape, LineServer, LineServerSettings } from './fake-line-server.js';
import { gmailChallenge, LINE_DEFAULTS, startLineServer } from './fake-line-server.js';

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
  | FaultShape;

export interface FakeUpstreamOptions extends LineServerSettings {
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

export interface FakeUpstream extends LineServer {
  options: FakeUpstreamOptions;
}

const POST_LOGIN_CAPS = 'IMAP4rev1 LITERAL+ IDLE NAMESPACE UIDPLUS MOVE';

function preAuthCaps(o: FakeUpstreamOptions, secure: boolean): string {
  const caps = ['IMAP4rev1', 'LITERAL+', 'ID', 'ENABLE', 'IDLE'];
  if (o.saslIr) caps.push('SASL-IR');
  if (!secure) caps.push('STARTTLS', 'LOGINDISABLED');
  else caps.push(...o.mechanisms.map((m) => `AUTH=${m}`));
  return caps.join(' ');
}

export async function startFakeUpstream(opts: Partial<FakeUpstreamOptions> = {}): Promise<FakeUpstream> {
  const options: FakeUpstreamOptions = {
    ...LINE_DEFAULTS,
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
  const server = await startLineServer('fake', options, (s) => {
    const greet = () => {
      const code = options.capabilityInGreeting ? `[CAPABILITY ${preAuthCaps(options, s.secure)}] ` : '';
      s.send(`* OK ${code}fake IMAP ready\r\n`);
    };

    const loggedIn = (tag: string) => {
      const code = options.capabilityInLoginOk ? `[CAPABILITY ${POST_LOGIN_CAPS}] ` : '';
      return `${tag} OK ${code}Logged in\r\n${options.afterLoginOk}`;
    };

    const refuse = (tag: string, mech: string) => {
      switch (options.reject) {
        case 'gmail':
          s.send(`+ ${gmailChallenge(mech, '401', 'bearer')}\r\n`);
          s.next(() => s.send(`${tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n`));
          return;
        case 'microsoft':
          s.send(`${tag} NO AUTHENTICATE failed.\r\n`);
          return;
        case 'throttle':
          s.send(
            `${tag} NO [UNAVAILABLE] Request is throttled. Suggested Backoff Time: 1000 milliseconds\r\n`,
          );
          return;
        default:
          s.fault(options.reject);
      }
    };

    if (options.greetingDelayMs === 0) greet();
    // A deliberately slow server, not synchronisation: the delay is what the test is about.
    else if (options.greetingDelayMs !== 'never') setTimeout(greet, options.greetingDelayMs).unref();
    return (line) => {
      const [tag = '', verb = '', ...args] = line.split(' ');
      const v = verb.toUpperCase();
      if (s.authenticated && options.notConnected && v !== 'LOGOUT') {
        s.send(`${tag} BAD User is authenticated but not connected.\r\n`);
        return;
      }
      if (v === 'CAPABILITY') {
        s.send(
          `* CAPABILITY ${s.authenticated ? POST_LOGIN_CAPS : preAuthCaps(options, s.secure)}\r\n${tag} OK done\r\n`,
        );
      } else if (v === 'NOOP') {
        s.send(`${tag} OK NOOP completed\r\n`);
      } else if (v === 'STARTTLS' && !s.secure) {
        s.startTls(`${tag} OK Begin TLS\r\n`);
      } else if (v === 'AUTHENTICATE' && s.secure && !s.authenticated) {
        const mech = (args[0] ?? '').toUpperCase();
        s.saslResponse(args[1], '+ \r\n', (blob) => s.login(blob, loggedIn(tag), () => refuse(tag, mech)));
      } else if (v === 'IDLE' && s.authenticated) {
        s.send('+ idling\r\n');
        s.next(() => s.send(`${tag} OK IDLE terminated\r\n`));
      } else if (v === 'LOGOUT') {
        s.send(`* BYE logging out\r\n${tag} OK LOGOUT completed\r\n`);
        s.end();
      } else if (s.authenticated) {
        s.send(`${tag} OK ${v} completed\r\n`);
      } else {
        s.send(`${tag} BAD command not allowed now\r\n`);
      }
    };
  });
  return Object.assign(server, { options });
}
