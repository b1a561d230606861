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
const NAME = 'mx.test';
const LINE_BYTES = 256;
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A whole pre-auth conversation, pipelined: two failed logins, a cancelled one, and QUIT. */
const CONVERSATION = [
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
]
  .map((l) => `${l}\r\n`)
  .join('');

const TRANSCRIPT = [
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
]
  .map((l) => `${l}\r\n`)
  .join('');

describe('SMTP front door fed in pieces', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor(
      { protocol: 'smtp', tls: 'none', allow_cleartext_login: true, server_name: NAME },
      {
        limits: { badCommands: 1000, lineBytes: LINE_BYTES },
        decide: () => ({ ok: false, reason: 'bad_credentials' }),
      },
    );
  });
  after(() => fd.close());

  test('the same replies whole, byte by byte, and split at every offset', async () => {
    const wire = Buffer.from(CONVERSATION);
    await assertSameEverySplit(fd.port, `220 ${NAME} ESMTP imap-oauth-proxy ready`, wire, TRANSCRIPT);
    assert.equal(fd.requests.length, 2 * (wire.length + 1), 'two logins reached the core per conversation');
  });
});

const VERBS = [
  'EHLO',
  'HELO',
  'ehlo',
  'AUTH',
  'AUTH PLAIN',
  'AUTH LOGIN',
  'auth login',
  `AUTH PLAIN ${b64('\0alice\0pw')}`,
  `AUTH LOGIN ${b64('alice')}`,
  'AUTH XOAUTH2',
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
  '*',
  '=',
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
    .map((n) => Buffer.concat([Buffer.from('NOOP '), Buffer.alloc(n - 5, 0x78)])),
);

describe('SMTP front door under random input', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor(
      { protocol: 'smtp', tls: 'none', allow_cleartext_login: true, server_name: NAME },
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
          const got = await converse(fd.port, `220 ${NAME} ESMTP imap-oauth-proxy ready`, cutAt(wire, cuts));
          const replies = got === '' ? [] : got.replace(/\r\n$/, '').split('\r\n');
          for (const r of replies) assert.match(r, /^[2-5]\d\d[ -]/, `well-formed: ${JSON.stringify(r)}`);
          const lastReply = replies.at(-1) ?? '';
          const http = clean.some((l) => /^[A-Z]+ \S+ HTTP\/\d/.test(l.toString('latin1')));
          assert.ok(
            lastReply === `221 2.0.0 ${NAME} closing connection` ||
              lastReply.startsWith(`421 4.7.0 ${NAME} `) ||
              (http && !got.includes('\r\n221 ')),
            `ends with QUIT's 221, a 421, or silence after an HTTP line: ${JSON.stringify(got)}`,
          );
          if (lastReply === `421 4.7.0 ${NAME} Line too long`)
            assert.ok(
              clean.some((l) => l.length > LINE_BYTES),
              'only a line over the limit is refused as too long',
            );
        },
      ),
      { numRuns: RUNS },
    );
    await until(
      async () =>
        (await metricValue(fd.metrics, 'imap_proxy_active_sessions', {
          protocol: 'smtp',
          phase: 'preauth',
        })) === 0,
      5000,
      'every pre-auth session to end',
    );
    const c = await RawImapClient.connect(fd.port);
    try {
      assert.equal(await c.readLine(), `220 ${NAME} ESMTP imap-oauth-proxy ready`, 'still serving');
    } finally {
      c.close();
    }
  });

  test('bytes without a line end are never held past the limit: 421 Line too long without waiting for LF', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: LINE_BYTES + 2, maxLength: 4 * LINE_BYTES }),
        fc.array(fc.nat(), { maxLength: 4 }),
        async (noise, cuts) => {
          const wire = Buffer.from(noise.map((b) => (b === 0x0a ? 0x20 : b)));
          assert.equal(
            await converse(fd.port, `220 ${NAME} ESMTP imap-oauth-proxy ready`, cutAt(wire, cuts)),
            `421 4.7.0 ${NAME} Line too long\r\n`,
          );
        },
      ),
      { numRuns: RUNS },
    );
  });
});
