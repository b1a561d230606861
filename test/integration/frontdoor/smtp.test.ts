import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type FailureReason, LOGIN_RESULTS } from '../../../src/errors.js';
import { smtpReply } from '../../../src/protocols/smtp/replies.js';
import { until } from '../../helpers/deadline.js';
import type { RawImapClient } from '../../helpers/imap-client.js';
import {
  assertFailureWords,
  assertSplicedUntilClosed,
  b64,
  CLEAR_NAME,
  type Frontdoor,
  frontdoorFor,
  logins,
  openGreeted,
  plainIr,
  preauthLimitTests,
  refusingFrontdoor,
  rejections,
  SMTP_UPSTREAM_CAPS,
  stalledFrontdoor,
  startFrontdoor,
  tlsConnections,
} from './harness.js';

const NAME = CLEAR_NAME;
/** The safe part of SMTP_UPSTREAM_CAPS, in the order the front door lists them. */
const SHARED = ['PIPELINING', '8BITMIME', 'SIZE 40000000', 'ENHANCEDSTATUSCODES', 'CHUNKING'];
const USERNAME_CHALLENGE = `334 ${b64('Username:')}`;
const PASSWORD_CHALLENGE = `334 ${b64('Password:')}`;

const smtpFrontdoor = frontdoorFor('smtp');

/** One whole reply: every `NNN-` line and the closing `NNN ` line. */
async function reply(c: RawImapClient): Promise<string[]> {
  const out: string[] = [];
  for (;;) {
    const l = await c.readLine();
    out.push(l);
    if (/^\d{3} /.test(l)) return out;
  }
}

async function send(c: RawImapClient, line: string): Promise<string[]> {
  c.write(`${line}\r\n`);
  return reply(c);
}

/** An EHLO reply as the client reads it: `250-` lines and the last `250 `. */
function ehloReply(lines: string[]): string[] {
  const all = [`${NAME} Hello client.example`, ...lines];
  return all.map((l, i) => `250${i === all.length - 1 ? ' ' : '-'}${l}`);
}

describe('greeting and EHLO', () => {
  test('EHLO lists only the safe extensions the upstream has, never BURL or its AUTH XOAUTH2', async (t) => {
    const fd = await smtpFrontdoor(t, 'implicit');
    const c = await openGreeted(t, fd, true);
    const ehlo = await send(c, 'EHLO client.example');
    assert.deepEqual(ehlo, ehloReply([...SHARED, 'AUTH PLAIN LOGIN', 'HELP']));
    assert.doesNotMatch(ehlo.join('\n'), /BURL|XOAUTH2|OAUTHBEARER|STARTTLS/);
    assert.deepEqual(await send(c, 'HELO client.example'), [`250 ${NAME}`]);
    assert.deepEqual(await send(c, 'EHLO'), ['501 5.5.4 Syntax: EHLO domain-or-address']);
    assert.deepEqual(await send(c, 'HELO'), ['501 5.5.4 Syntax: HELO domain-or-address']);
  });

  test('two upstreams: SIZE is the smaller, an extension only one has is dropped', async (t) => {
    const other = [
      'PIPELINING',
      'SIZE 10485760',
      '8BITMIME',
      'ENHANCEDSTATUSCODES',
      'DSN',
      'AUTH LOGIN XOAUTH2',
    ];
    const fd = await smtpFrontdoor(t, 'implicit', { upstreams: [SMTP_UPSTREAM_CAPS, other] });
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(
      await send(c, 'EHLO client.example'),
      ehloReply([
        'PIPELINING',
        '8BITMIME',
        'SIZE 10485760',
        'ENHANCEDSTATUSCODES',
        'AUTH PLAIN LOGIN',
        'HELP',
      ]),
    );
  });

  test('an upstream not contacted yet: no extension is advertised', async (t) => {
    const fd = await smtpFrontdoor(t, 'implicit', { upstreams: [SMTP_UPSTREAM_CAPS, undefined] });
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, 'EHLO client.example'), ehloReply(['AUTH PLAIN LOGIN', 'HELP']));
  });

  test('STARTTLS listener: STARTTLS and no AUTH before TLS; AUTH and no STARTTLS after; the version is counted', async (t) => {
    const fd = await smtpFrontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    assert.deepEqual(await send(c, 'EHLO client.example'), ehloReply([...SHARED, 'STARTTLS', 'HELP']));
    assert.deepEqual(await send(c, 'STARTTLS now'), ['501 5.5.4 Syntax: STARTTLS']);
    assert.deepEqual(await send(c, 'STARTTLS'), ['220 2.0.0 Ready to start TLS']);
    await c.startTls();
    assert.deepEqual(
      await send(c, 'EHLO client.example'),
      ehloReply([...SHARED, 'AUTH PLAIN LOGIN', 'HELP']),
    );
    assert.deepEqual(await send(c, 'STARTTLS'), ['503 5.5.1 TLS already active']);
    assert.equal(await tlsConnections(fd, 'TLSv1.3'), 1);
  });

  test('cleartext listener: no STARTTLS; AUTH only where cleartext login is allowed', async (t) => {
    const closed = await smtpFrontdoor(t, 'none');
    const c1 = await openGreeted(t, closed, false);
    assert.deepEqual(await send(c1, 'EHLO client.example'), ehloReply([...SHARED, 'HELP']));
    assert.deepEqual(await send(c1, 'STARTTLS'), ['502 5.5.1 STARTTLS not offered here']);
    const allowed = await smtpFrontdoor(t, 'none', { cleartext: true });
    const c2 = await openGreeted(t, allowed, false);
    assert.deepEqual(
      await send(c2, 'EHLO client.example'),
      ehloReply([...SHARED, 'AUTH PLAIN LOGIN', 'HELP']),
    );
  });
});

describe('AUTH', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor(
      { protocol: 'smtp', tls: 'implicit', server_name: NAME },
      { limits: { badCommands: 100 } },
    );
  });
  after(() => fd.close());
  const last = () => fd.requests.at(-1)!;

  test('AUTH PLAIN with an initial response: 235, and the core gets login, password, mechanism, protocol', async (t) => {
    const c = await openGreeted(t, fd, true);
    await send(c, 'EHLO client.example');
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice@example.com', 'pä ss')}`), [
      '235 2.7.0 Authentication successful',
    ]);
    const req = last();
    assert.deepEqual(
      [req.protocol, req.login, req.password, req.mechanism, req.client.secure, req.client.listener],
      ['smtp', 'alice@example.com', 'pä ss', 'AUTH PLAIN', true, 'test'],
    );
    assert.equal(await logins(fd, 'success'), 1);
  });

  test('AUTH PLAIN with a 334 continuation; an authzid equal to the login is accepted', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, 'auth plain'), ['334 ']);
    assert.deepEqual(await send(c, plainIr('bob', 'pw2', 'bob')), ['235 2.7.0 Authentication successful']);
    assert.deepEqual([last().login, last().password, last().mechanism], ['bob', 'pw2', 'AUTH PLAIN']);
  });

  test('AUTH LOGIN asks Username: and Password: in base64', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, 'AUTH LOGIN'), [USERNAME_CHALLENGE]);
    assert.deepEqual(await send(c, b64('carol')), [PASSWORD_CHALLENGE]);
    assert.deepEqual(await send(c, b64('pw 3')), ['235 2.7.0 Authentication successful']);
    assert.deepEqual([last().login, last().password, last().mechanism], ['carol', 'pw 3', 'AUTH LOGIN']);
  });

  test('AUTH LOGIN with the user on the AUTH line asks only for the password', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, `AUTH LOGIN ${b64('dave')}`), [PASSWORD_CHALLENGE]);
    assert.deepEqual(await send(c, b64('pw4')), ['235 2.7.0 Authentication successful']);
    assert.deepEqual([last().login, last().password, last().mechanism], ['dave', 'pw4', 'AUTH LOGIN']);
  });

  test('* cancels at every step with 501 5.5.2; bad base64 501; unknown mechanism 504; bad syntax 501', async (t) => {
    const before = fd.requests.length;
    const c = await openGreeted(t, fd, true);
    const cancelled = ['501 5.5.2 Authentication cancelled'];
    assert.deepEqual(await send(c, 'AUTH PLAIN'), ['334 ']);
    assert.deepEqual(await send(c, '*'), cancelled);
    assert.deepEqual(await send(c, 'AUTH LOGIN'), [USERNAME_CHALLENGE]);
    assert.deepEqual(await send(c, '*'), cancelled);
    assert.deepEqual(await send(c, `AUTH LOGIN ${b64('erin')}`), [PASSWORD_CHALLENGE]);
    assert.deepEqual(await send(c, '*'), cancelled);
    assert.deepEqual(await send(c, 'AUTH PLAIN !!!!'), ['501 5.5.2 Cannot decode base64']);
    assert.deepEqual(await send(c, 'AUTH PLAIN'), ['334 ']);
    assert.deepEqual(await send(c, 'not base64'), ['501 5.5.2 Cannot decode base64']);
    assert.deepEqual(await send(c, 'AUTH LOGIN'), [USERNAME_CHALLENGE]);
    assert.deepEqual(await send(c, b64('frank')), [PASSWORD_CHALLENGE]);
    assert.deepEqual(await send(c, 'abc'), ['501 5.5.2 Cannot decode base64']);
    assert.deepEqual(await send(c, 'AUTH LOGIN'), [USERNAME_CHALLENGE]);
    assert.deepEqual(await send(c, ''), ['501 5.5.2 Empty user name']);
    assert.deepEqual(await send(c, 'AUTH PLAIN ='), ['501 5.5.2 Malformed PLAIN response']);
    assert.deepEqual(await send(c, `AUTH PLAIN ${b64('no-nuls')}`), ['501 5.5.2 Malformed PLAIN response']);
    assert.deepEqual(await send(c, 'AUTH XOAUTH2 abc'), ['504 5.5.4 Unrecognized authentication type']);
    assert.deepEqual(await send(c, 'AUTH CRAM-MD5'), ['504 5.5.4 Unrecognized authentication type']);
    assert.deepEqual(await send(c, 'AUTH'), ['501 5.5.4 Syntax: AUTH mechanism [initial-response]']);
    assert.deepEqual(await send(c, 'AUTH PLAIN abcd efgh'), [
      '501 5.5.4 Syntax: AUTH mechanism [initial-response]',
    ]);
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw', 'mallory')}`), [
      '535 5.7.8 Authorization identity must be empty or the login name',
    ]);
    assert.equal(fd.requests.length, before, 'none of these reached the core');
    assert.deepEqual(await send(c, 'NOOP'), ['250 2.0.0 OK'], 'the session goes on');
  });

  test('AUTH LOGIN with = on the AUTH line asks for the user name', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, 'AUTH LOGIN ='), [USERNAME_CHALLENGE]);
    assert.deepEqual(await send(c, '*'), ['501 5.5.2 Authentication cancelled']);
  });

  test('upstreamKeeps: after EHLO it refuses an upstream lacking a promised extension or with a smaller SIZE', async (t) => {
    const c = await openGreeted(t, fd, true);
    await send(c, 'EHLO client.example');
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('gina', 'pw')}`), [
      '235 2.7.0 Authentication successful',
    ]);
    const keeps = last().upstreamKeeps;
    assert.ok(keeps, 'present after EHLO');
    assert.equal(keeps(SMTP_UPSTREAM_CAPS), true);
    assert.equal(keeps([...SMTP_UPSTREAM_CAPS.filter((x) => !x.startsWith('SIZE')), 'SIZE 80000000']), true);
    assert.equal(keeps(SMTP_UPSTREAM_CAPS.filter((x) => x !== 'CHUNKING')), false);
    assert.equal(keeps([...SMTP_UPSTREAM_CAPS.filter((x) => !x.startsWith('SIZE')), 'SIZE 1000']), false);
  });

  test('AUTH after a plain HELO (or no greeting at all) works and promises nothing', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await send(c, 'HELO old-device'), [`250 ${NAME}`]);
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('henry', 'pw')}`), [
      '235 2.7.0 Authentication successful',
    ]);
    assert.equal(last().login, 'henry');
    assert.equal(last().upstreamKeeps, undefined);
    const d = await openGreeted(t, fd, true);
    assert.deepEqual(await send(d, `AUTH LOGIN ${b64('ida')}`), [PASSWORD_CHALLENGE]);
    assert.deepEqual(await send(d, b64('pw')), ['235 2.7.0 Authentication successful']);
    assert.equal(last().upstreamKeeps, undefined);
  });

  test('bytes pipelined behind AUTH reach the upstream after 235, in order, and come back spliced', async (t) => {
    const c = await openGreeted(t, fd, true);
    await send(c, 'EHLO client.example');
    const behind =
      'MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n';
    c.write(`AUTH PLAIN ${plainIr('judy', 'pw')}\r\n${behind}`);
    assert.equal(await c.readLine(), '235 2.7.0 Authentication successful');
    const echoed = behind.split('\r\n').slice(0, -1);
    for (const want of echoed) assert.equal(await c.readLine(), want);
    await until(() => fd.upstream.text().endsWith(behind), 5000, 'the pipelined bytes to reach upstream');
    await assertSplicedUntilClosed(fd, c);
  });
});

/** Base code and enhanced code per failure; the text is the reply table's. */
const FAILURE_CODES: Record<FailureReason, string> = {
  bad_credentials: '535 5.7.8',
  account_disabled: '535 5.7.8',
  limited: '454 4.7.0',
  session_limit: '454 4.7.0',
  privacy_required: '538 5.7.11',
  no_grant: '535 5.7.8',
  needs_consent: '535 5.7.8',
  token_unavailable: '454 4.7.0',
  upstream_rejected: '535 5.7.8',
  upstream_unavailable: '454 4.7.0',
  authorization_failed: '535 5.7.8',
  protocol_disabled: '535 5.7.139',
  scope_missing: '535 5.7.8',
  mailbox_in_use: '454 4.7.0',
  protocol_error: '454 4.7.0',
  timeout: '454 4.7.0',
  aborted: '454 4.7.0',
};

describe('login failures', () => {
  test('every failure reason is answered with its RFC 3463 reply, and counted', async (t) => {
    const { fd, c, refuse } = await refusingFrontdoor(t, 'smtp');
    for (const reason of LOGIN_RESULTS.filter((r) => r !== 'success' && r !== 'aborted')) {
      refuse(reason);
      assert.deepEqual(
        await send(c, `AUTH PLAIN ${plainIr('alice', 'Hunter2Secret')}`),
        [`${FAILURE_CODES[reason]} ${smtpReply(reason).text}`],
        reason,
      );
      assert.equal(await logins(fd, reason), 1, reason);
    }
    assert.equal(fd.requests.length, LOGIN_RESULTS.length - 2);
  });

  test('the extra words of a failure follow its text: where to reconnect, what to enable', async (t) => {
    const r = await refusingFrontdoor(t, 'smtp');
    const exchange = async (c: RawImapClient, line: string) => (await send(c, line)).join('\n');
    await assertFailureWords(r, exchange, PASSWORD_CHALLENGE, [
      [
        'needs_consent',
        'Reconnect at https://proxy.example/connect',
        '535 5.7.8 Mailbox authorization expired. Reconnect at https://proxy.example/connect',
      ],
      [
        'protocol_disabled',
        'Enable Authenticated SMTP for the mailbox',
        '535 5.7.139 Authenticated SMTP is switched off for this mailbox or tenant at the provider. Enable Authenticated SMTP for the mailbox',
      ],
      [
        'scope_missing',
        'Reconnect at https://proxy.example/connect',
        '535 5.7.8 The mailbox was connected without permission to send mail. Reconnect at https://proxy.example/connect',
      ],
      ['no_grant', '', '535 5.7.8 Mailbox not connected yet; contact your administrator'],
      ['account_disabled', '', '535 5.7.8 Account disabled; contact your administrator'],
    ]);
  });

  test('a login that runs out of time: 454 4.7.0, the core is aborted, the session goes on', async (t) => {
    const { fd, c } = await stalledFrontdoor(t, 'smtp');
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`), [
      '454 4.7.0 Timed out; try again later',
    ]);
    assert.equal(fd.signals[0]!.aborted, true);
    assert.equal(await logins(fd, 'timeout'), 1);
    assert.deepEqual(await send(c, 'NOOP'), ['250 2.0.0 OK']);
  });

  test('three wrong passwords close the connection; the fourth is never tried; outages do not count', async (t) => {
    const { fd, c, refuse } = await refusingFrontdoor(t, 'smtp', {
      first: 'upstream_unavailable',
      limits: {},
    });
    for (let i = 0; i < 3; i++)
      assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`), [
        '454 4.7.0 Mail server unavailable; try again later',
      ]);
    refuse('bad_credentials');
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'guess1')}`), [
      '535 5.7.8 Authentication credentials invalid',
    ]);
    refuse('limited');
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'guess2')}`), [
      '454 4.7.0 Too many failed logins; try again later',
    ]);
    refuse('bad_credentials');
    c.write(`AUTH PLAIN ${plainIr('alice', 'guess3')}\r\nAUTH PLAIN ${plainIr('alice', 'guess4')}\r\n`);
    assert.equal(
      await c.readToClose(),
      `535 5.7.8 Authentication credentials invalid\r\n421 4.7.0 ${NAME} Too many failed logins on this connection\r\n`,
    );
    assert.equal(fd.requests.length, 6);
    assert.equal(await rejections(fd, 'too_many_failed_logins'), 1);
  });
});

describe('cleartext and STARTTLS', () => {
  test('AUTH before STARTTLS: 538 5.7.11, counted privacy_required, the core never sees the password', async (t) => {
    const fd = await smtpFrontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    await send(c, 'EHLO client.example');
    const refused = ['538 5.7.11 Encryption required: use STARTTLS or implicit TLS before AUTH'];
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`), refused);
    assert.deepEqual(await send(c, 'AUTH LOGIN'), refused);
    assert.equal(fd.requests.length, 0);
    assert.equal(await logins(fd, 'privacy_required'), 2);
    assert.deepEqual(await send(c, 'STARTTLS'), ['220 2.0.0 Ready to start TLS']);
    await c.startTls();
    assert.deepEqual(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`), [
      '235 2.7.0 Authentication successful',
    ]);
    assert.equal(fd.requests[0]!.client.secure, true);
    assert.equal(fd.requests[0]!.upstreamKeeps, undefined, 'STARTTLS forgets the cleartext EHLO');
  });

  test('bytes pipelined behind STARTTLS: 421, closed, counted starttls_injection', async (t) => {
    const fd = await smtpFrontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    c.write(`STARTTLS\r\nAUTH PLAIN ${plainIr('mallory', 'evil')}\r\n`);
    assert.equal(await c.readToClose(), `421 4.7.0 ${NAME} Data after STARTTLS refused\r\n`);
    assert.equal(fd.requests.length, 0);
    assert.equal(await rejections(fd, 'starttls_injection'), 1);
  });
});

describe('commands and limits before AUTH', () => {
  test('mail commands need AUTH; VRFY and EXPN are not offered; unknown is 500; RSET NOOP HELP QUIT', async (t) => {
    const fd = await smtpFrontdoor(t, 'none');
    const c = await openGreeted(t, fd, false);
    for (const cmd of ['MAIL FROM:<a@example.com>', 'RCPT TO:<b@example.org>', 'DATA', 'BDAT 10 LAST'])
      assert.deepEqual(await send(c, cmd), ['530 5.7.0 Authentication required'], cmd);
    assert.deepEqual(await send(c, 'VRFY alice'), ['502 5.5.1 Command not implemented']);
    assert.deepEqual(await send(c, 'EXPN staff'), ['502 5.5.1 Command not implemented']);
    assert.deepEqual(await send(c, 'XCLIENT ADDR=1.2.3.4'), ['500 5.5.2 Command not recognized']);
    assert.deepEqual(await send(c, ''), ['500 5.5.2 Command not recognized']);
    assert.deepEqual(await send(c, 'RSET'), ['250 2.0.0 OK']);
    assert.deepEqual(await send(c, 'noop'), ['250 2.0.0 OK']);
    assert.deepEqual(await send(c, 'HELP'), [
      '214 2.0.0 Commands: EHLO HELO STARTTLS AUTH RSET NOOP QUIT HELP; AUTH before MAIL',
    ]);
    c.write('QUIT\r\n');
    assert.equal(await c.readToClose(), `221 2.0.0 ${NAME} closing connection\r\n`);
  });

  test('too many bad commands: each answered, then 421 and closed', async (t) => {
    const fd = await smtpFrontdoor(t, 'none', { limits: { badCommands: 3 } });
    const c = await openGreeted(t, fd, false);
    assert.deepEqual(await send(c, 'MAIL FROM:<a@b>'), ['530 5.7.0 Authentication required']);
    assert.deepEqual(await send(c, 'FOO'), ['500 5.5.2 Command not recognized']);
    c.write('VRFY x\r\nNOOP\r\n');
    assert.equal(
      await c.readToClose(),
      `502 5.5.1 Command not implemented\r\n421 4.7.0 ${NAME} Too many errors\r\n`,
      'nothing after the limit is answered',
    );
    assert.equal(await rejections(fd, 'too_many_bad_commands'), 1);
  });

  preauthLimitTests('smtp', {
    login: 'AUTH',
    anAnswer: 'an SMTP',
    exchange: async (c, line) => (await send(c, line)).join('\n'),
    valid: ['NOOP', '250 2.0.0 OK'],
    filler: ['NOOP', '250 2.0.0 OK'],
    talkFirst: ['EHLO spambot', `421 4.7.0 ${NAME} Talking before the greeting is not allowed\r\n`],
    tooManyCommands: `421 4.7.0 ${NAME} Too many commands before authentication\r\n`,
    idle: ['421 4.4.2', `421 4.4.2 ${NAME} Idle too long, closing connection\r\n`],
    lineTooLong: ['421', `421 4.7.0 ${NAME} Line too long\r\n`],
    shutdown: ['421', `421 4.7.0 ${NAME} Server shutting down, try again later\r\n`],
  });
});
