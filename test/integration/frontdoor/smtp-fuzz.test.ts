import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  assertSameEverySplit,
  b64,
  CLEAR_GREETING,
  CLEAR_NAME,
  crlf,
  describeRandomInput,
  suiteListener,
} from './harness.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 40);
const NAME = CLEAR_NAME;
const LINE_BYTES = 256;

/** A whole pre-auth conversation, pipelined: two failed logins, a cancelled one, and QUIT. */
const CONVERSATION = crlf([
  'EHLO client.example',
  'NOOP',
  'MAIL FROM:<a@example.com>',
  'HELP',
  'AUTH PLAIN',
  '*',
  'AUTH LOGIN',
  b64('alice'),
  b64('wrong password'),
  `AUTH PLAIN ${b64('\0alice\0wrong again')}`,
  'rset',
  'VRFY alice',
  'QUIT',
]);

const TRANSCRIPT = crlf([
  `250-${NAME} Hello client.example`,
  '250-PIPELINING',
  '250-8BITMIME',
  '250-SIZE 40000000',
  '250-ENHANCEDSTATUSCODES',
  '250-CHUNKING',
  '250-AUTH PLAIN LOGIN',
  '250 HELP',
  '250 2.0.0 OK',
  '530 5.7.0 Authentication required',
  '214 2.0.0 Commands: EHLO HELO STARTTLS AUTH RSET NOOP QUIT HELP; AUTH before MAIL',
  '334 ',
  '501 5.5.2 Authentication cancelled',
  `334 ${b64('Username:')}`,
  `334 ${b64('Password:')}`,
  '535 5.7.8 Authentication credentials invalid',
  '535 5.7.8 Authentication credentials invalid',
  '250 2.0.0 OK',
  '502 5.5.1 Command not implemented',
  `221 2.0.0 ${NAME} closing connection`,
]);

describe('SMTP front door fed in pieces', () => {
  const listener = suiteListener('smtp', { badCommands: 1000, lineBytes: LINE_BYTES });

  test('the same replies whole, byte by byte, and split at every offset', async () => {
    const fd = listener();
    const wire = Buffer.from(CONVERSATION);
    await assertSameEverySplit(fd.port, CLEAR_GREETING.smtp!, wire, TRANSCRIPT);
    assert.equal(fd.requests.length, 2 * (wire.length + 1), 'two logins reached the core per conversation');
  });
});

/** The protocol's own verbs; arbCommandLine adds those SMTP and POP3 share. */
const VERBS = [
  'EHLO',
  'HELO',
  'ehlo',
  'STARTTLS',
  'MAIL FROM:',
  'RCPT TO:',
  'DATA',
  'BDAT',
  'RSET',
  'NOOP',
  'HELP',
  'VRFY',
  'QUIT',
];

describeRandomInput('smtp', {
  verbs: VERBS,
  fill: 'NOOP',
  runs: RUNS,
  tooLongName: '421 Line too long',
  rules: {
    replies: (got) => {
      const replies = got === '' ? [] : got.replace(/\r\n$/, '').split('\r\n');
      for (const r of replies) assert.match(r, /^[2-5]\d\d[ -]/, `well-formed: ${JSON.stringify(r)}`);
      return replies;
    },
    ends: (last) => last === `221 2.0.0 ${NAME} closing connection` || last.startsWith(`421 4.7.0 ${NAME} `),
    quitAnswered: (_said, got) => got.includes('\r\n221 '),
    tooLong: `421 4.7.0 ${NAME} Line too long`,
    lineBytes: LINE_BYTES,
  },
});
