import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertSameEverySplit,
  b64,
  CLEAR_GREETING,
  crlf,
  describeRandomInput,
  suiteListener,
} from './harness.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 40);
const LINE_BYTES = 256;

/** A whole pre-auth conversation, pipelined: three failed logins, a cancelled one, refusals, and QUIT. */
const CONVERSATION = crlf([
  'CAPA',
  'NOOP',
  'USER alice',
  'PASS wrong password',
  'AUTH PLAIN',
  '*',
  'AUTH LOGIN',
  b64('alice'),
  b64('wrong again'),
  `AUTH PLAIN ${b64('\0alice\0and again')}`,
  'APOP alice 0123456789abcdef0123456789abcdef',
  'AUTH',
  'stat',
  'QUIT',
]);

const INVALID = '-ERR [AUTH] Invalid credentials';
const TRANSCRIPT = crlf([
  '+OK Capability list follows',
  'USER',
  'SASL PLAIN LOGIN',
  'RESP-CODES',
  'AUTH-RESP-CODE',
  'TOP',
  'UIDL',
  'PIPELINING',
  '.',
  '-ERR Unknown command or not allowed before login',
  '+OK Send PASS',
  INVALID,
  '+ ',
  '-ERR Authentication cancelled',
  `+ ${b64('Username:')}`,
  `+ ${b64('Password:')}`,
  INVALID,
  INVALID,
  '-ERR APOP is not supported here: log in with USER/PASS or AUTH and the app password',
  '+OK Mechanisms follow',
  'PLAIN',
  'LOGIN',
  '.',
  '-ERR Unknown command or not allowed before login',
  '+OK Bye',
]);

/** What a POP3 front door may say when it closes a connection before login. */
const CLOSING = [
  '+OK Bye',
  '-ERR Too many invalid commands',
  '-ERR Too many commands before login',
  '-ERR Too many failed logins on this connection',
  '-ERR Line too long',
];

/**
 * Splits what the server said into replies, checking each is well formed: `+OK`, `-ERR`, or a
 * `+ ` continuation, and the two multi-line answers (CAPA, bare AUTH) printable and dot-ended.
 */
function replies(got: string): string[] {
  const lines = got === '' ? [] : got.replace(/\r\n$/, '').split('\r\n');
  assert.ok(got === '' || got.endsWith('\r\n'), `every reply ends in CRLF: ${JSON.stringify(got)}`);
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    assert.match(
      l,
      /^(\+OK [\x20-\x7e]+|-ERR [\x20-\x7e]+|\+ [A-Za-z0-9+/=]*)$/,
      `well-formed: ${JSON.stringify(l)}`,
    );
    out.push(l);
    if (l === '+OK Capability list follows' || l === '+OK Mechanisms follow') {
      for (i++; lines[i] !== '.'; i++) {
        assert.ok(i < lines.length, `a multi-line reply ends with a dot line: ${JSON.stringify(got)}`);
        assert.match(lines[i]!, /^[A-Z][\x20-\x7e]*$/, 'a capability or mechanism line');
      }
    }
  }
  return out;
}

describe('POP3 front door fed in pieces', () => {
  const listener = suiteListener('pop3', { badCommands: 1000, failedLogins: 1000, lineBytes: LINE_BYTES });

  test('the same replies whole, byte by byte, and split at every offset', async () => {
    const fd = listener();
    const wire = Buffer.from(CONVERSATION);
    await assertSameEverySplit(fd.port, CLEAR_GREETING.pop3!, wire, TRANSCRIPT);
    assert.equal(fd.requests.length, 3 * (wire.length + 1), 'three logins reached the core per conversation');
    assert.deepEqual(
      fd.requests.slice(0, 3).map((r) => [r.mechanism, r.login, r.password, r.protocol]),
      [
        ['USER/PASS', 'alice', 'wrong password', 'pop3'],
        ['AUTH LOGIN', 'alice', 'wrong again', 'pop3'],
        ['AUTH PLAIN', 'alice', 'and again', 'pop3'],
      ],
    );
  });
});

/** The protocol's own verbs; arbCommandLine adds those SMTP and POP3 share. */
const VERBS = [
  'CAPA',
  'capa',
  'STLS',
  'USER',
  'USER alice',
  'PASS',
  'PASS pw',
  'APOP',
  'STAT',
  'LIST',
  'RETR 1',
  'DELE 1',
  'NOOP',
  'RSET',
  'TOP 1 0',
  'UIDL',
  'QUIT',
  '.',
];

describeRandomInput('pop3', {
  verbs: VERBS,
  fill: 'STAT',
  runs: RUNS,
  tooLongName: '-ERR Line too long',
  rules: {
    replies,
    ends: (last) => CLOSING.includes(last),
    quitAnswered: (said) => said.includes('+OK Bye'),
    tooLong: '-ERR Line too long',
    lineBytes: LINE_BYTES,
    more: (said) => assert.ok(!said.includes('+OK Logged in'), 'no login succeeds'),
  },
});
