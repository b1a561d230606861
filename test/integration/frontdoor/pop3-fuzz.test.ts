import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import {
  assertSameEverySplit,
  converse,
  cutAt,
  type Frontdoor,
  metricValue,
  startFrontdoor,
} from './harness.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 40);
const GREETING = '+OK imap-oauth-proxy POP3 ready';
const LINE_BYTES = 256;
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A whole pre-auth conversation, pipelined: three failed logins, a cancelled one, refusals, and QUIT. */
const CONVERSATION = [
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
]
  .map((l) => `${l}\r\n`)
  .join('');

const INVALID = '-ERR [AUTH] Invalid credentials';
const TRANSCRIPT = [
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
]
  .map((l) => `${l}\r\n`)
  .join('');

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
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor(
      { protocol: 'pop3', tls: 'none', allow_cleartext_login: true },
      {
        limits: { badCommands: 1000, failedLogins: 1000, lineBytes: LINE_BYTES },
        decide: () => ({ ok: false, reason: 'bad_credentials' }),
      },
    );
  });
  after(() => fd.close());

  test('the same replies whole, byte by byte, and split at every offset', async () => {
    const wire = Buffer.from(CONVERSATION);
    await assertSameEverySplit(fd.port, GREETING, wire, TRANSCRIPT);
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

const VERBS = [
  'CAPA',
  'capa',
  'STLS',
  'USER',
  'USER alice',
  'PASS',
  'PASS pw',
  'AUTH',
  'AUTH PLAIN',
  'AUTH LOGIN',
  'auth login',
  `AUTH PLAIN ${b64('\0alice\0pw')}`,
  `AUTH LOGIN ${b64('alice')}`,
  'AUTH XOAUTH2',
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
  '*',
  '=',
  '.',
  'GET',
  'POST / HTTP/1.0',
];

/** One command line's bytes (no CR or LF inside): a known verb with noise, or noise alone. */
const arbLine = fc.oneof(
  fc
    .tuple(fc.constantFrom(...VERBS), fc.option(fc.string({ maxLength: 40 }), { nil: undefined }))
    .map(([verb, arg]) => Buffer.from(arg === undefined ? verb : `${verb} ${arg}`)),
  fc.uint8Array({ maxLength: LINE_BYTES + 60 }).map((a) => Buffer.from(a)),
  // Lines around the limit: at it they are answered, one over closes the connection.
  fc
    .integer({ min: LINE_BYTES - 2, max: LINE_BYTES + 2 })
    .map((n) => Buffer.concat([Buffer.from('STAT '), Buffer.alloc(n - 5, 0x78)])),
);

describe('POP3 front door under random input', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor(
      { protocol: 'pop3', tls: 'none', allow_cleartext_login: true },
      { limits: { lineBytes: LINE_BYTES }, decide: () => ({ ok: false, reason: 'bad_credentials' }) },
    );
  });
  after(() => fd.close());

  test('random command lines, however chunked: well-formed replies only, and the connection always ends', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(arbLine, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 6 }),
        async (lines, cuts) => {
          const clean = lines.map((l) => Buffer.from(l.filter((b) => b !== 0x0a && b !== 0x0d)));
          // A trailing `*` ends any SASL exchange the noise began, so QUIT is read as a command.
          const wire = Buffer.concat([
            ...clean.flatMap((l) => [l, Buffer.from('\r\n')]),
            Buffer.from('*\r\nQUIT\r\n'),
          ]);
          const got = await converse(fd.port, GREETING, cutAt(wire, cuts));
          const said = replies(got);
          const lastReply = said.at(-1) ?? '';
          const http = clean.some((l) => /^[A-Z]+ \S+ HTTP\/\d/.test(l.toString('latin1')));
          assert.ok(
            CLOSING.includes(lastReply) || (http && !said.includes('+OK Bye')),
            `ends with QUIT's +OK, a closing -ERR, or silence after an HTTP line: ${JSON.stringify(got)}`,
          );
          if (lastReply === '-ERR Line too long')
            assert.ok(
              clean.some((l) => l.length > LINE_BYTES),
              'only a line over the limit is refused as too long',
            );
          assert.ok(!said.includes('+OK Logged in'), 'no login succeeds');
        },
      ),
      { numRuns: RUNS },
    );
    await until(
      async () =>
        (await metricValue(fd.metrics, 'imap_proxy_active_sessions', {
          protocol: 'pop3',
          phase: 'preauth',
        })) === 0,
      5000,
      'every pre-auth session to end',
    );
    const c = await RawImapClient.connect(fd.port);
    try {
      assert.equal(await c.readLine(), GREETING, 'still serving');
    } finally {
      c.close();
    }
  });

  test('bytes without a line end are never held past the limit: -ERR Line too long without waiting for LF', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: LINE_BYTES + 2, maxLength: 4 * LINE_BYTES }),
        fc.array(fc.nat(), { maxLength: 4 }),
        async (noise, cuts) => {
          const wire = Buffer.from(noise.map((b) => (b === 0x0a ? 0x20 : b)));
          assert.equal(await converse(fd.port, GREETING, cutAt(wire, cuts)), '-ERR Line too long\r\n');
        },
      ),
      { numRuns: RUNS },
    );
  });
});
