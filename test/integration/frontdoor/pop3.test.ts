import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type FailureReason, LOGIN_RESULTS } from '../../../src/errors.js';
import { pop3Reply } from '../../../src/protocols/pop3/replies.js';
import { until } from '../../helpers/deadline.js';
import type { RawImapClient } from '../../helpers/imap-client.js';
import {
  assertFailureWords,
  assertSplicedUntilClosed,
  b64,
  type Frontdoor,
  frontdoorFor,
  logins,
  openGreeted,
  POP3_UPSTREAM_CAPS,
  plainIr,
  preauthLimitTests,
  refusingFrontdoor,
  rejections,
  stalledFrontdoor,
  startFrontdoor,
  tlsConnections,
} from './harness.js';

const USERNAME_CHALLENGE = `+ ${b64('Username:')}`;
const PASSWORD_CHALLENGE = `+ ${b64('Password:')}`;
const LOGGED_IN = '+OK Logged in';
const UNKNOWN = '-ERR Unknown command or not allowed before login';
const PRIVACY = '-ERR [AUTH] Use STLS or implicit TLS before logging in';
const CAPA_HEAD = '+OK Capability list follows';
/** The capabilities every POP3 front door lists, then the upstreams' shared ones. */
const ALWAYS = ['RESP-CODES', 'AUTH-RESP-CODE'];
const SHARED = ['TOP', 'UIDL', 'PIPELINING'];
const LOGIN_CAPS = ['USER', 'SASL PLAIN LOGIN'];

const pop3Frontdoor = frontdoorFor('pop3');

/** A one-line reply. */
async function send(c: RawImapClient, line: string): Promise<string> {
  c.write(`${line}\r\n`);
  return c.readLine();
}

/** A multi-line reply up to and including its `.` line. */
async function sendMulti(c: RawImapClient, line: string): Promise<string[]> {
  c.write(`${line}\r\n`);
  const out = [await c.readLine()];
  if (!out[0]!.startsWith('+OK')) return out;
  for (;;) {
    const l = await c.readLine();
    out.push(l);
    if (l === '.') return out;
  }
}

const capa = (lines: string[]) => [CAPA_HEAD, ...lines, '.'];
describe('greeting and CAPA', () => {
  test('implicit TLS: +OK greeting; CAPA lists USER, SASL PLAIN LOGIN, response codes and the shared TOP UIDL PIPELINING, dot-terminated', async (t) => {
    const fd = await pop3Frontdoor(t, 'implicit');
    const c = await openGreeted(t, fd, true);
    const got = await sendMulti(c, 'CAPA');
    assert.deepEqual(got, capa([...LOGIN_CAPS, ...ALWAYS, ...SHARED]));
    assert.doesNotMatch(got.join('\n'), /STLS|XOAUTH2|OAUTHBEARER/);
    assert.deepEqual(await sendMulti(c, 'capa'), got, 'verbs are case-insensitive');
  });

  test('STLS listener: STLS and no login before TLS; login and no STLS after; the TLS version is counted', async (t) => {
    const fd = await pop3Frontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa(['STLS', ...ALWAYS, ...SHARED]));
    assert.equal(await send(c, 'STLS now'), '-ERR STLS takes no arguments');
    assert.equal(await send(c, 'STLS'), '+OK Begin TLS negotiation now');
    await c.startTls();
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa([...LOGIN_CAPS, ...ALWAYS, ...SHARED]));
    assert.equal(await send(c, 'STLS'), '-ERR TLS already active');
    assert.equal(await tlsConnections(fd, 'TLSv1.3'), 1);
  });

  test('cleartext listener: no STLS; USER and SASL only where cleartext login is allowed', async (t) => {
    const closed = await pop3Frontdoor(t, 'none');
    const c1 = await openGreeted(t, closed, false);
    assert.deepEqual(await sendMulti(c1, 'CAPA'), capa([...ALWAYS, ...SHARED]));
    assert.equal(await send(c1, 'STLS'), '-ERR STLS not offered here');
    const allowed = await pop3Frontdoor(t, 'none', { cleartext: true });
    const c2 = await openGreeted(t, allowed, false);
    assert.deepEqual(await sendMulti(c2, 'CAPA'), capa([...LOGIN_CAPS, ...ALWAYS, ...SHARED]));
  });

  test('STLS listener that allows cleartext login: STLS and login both offered before TLS', async (t) => {
    const fd = await pop3Frontdoor(t, 'starttls', { cleartext: true });
    const c = await openGreeted(t, fd, false);
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa(['STLS', ...LOGIN_CAPS, ...ALWAYS, ...SHARED]));
  });

  test('two upstreams: a capability only one has is dropped; keywords compare case-insensitively', async (t) => {
    const other = ['top', 'USER', 'PIPELINING', 'EXPIRE 0', 'SASL PLAIN XOAUTH2'];
    const fd = await pop3Frontdoor(t, 'implicit', { upstreams: [POP3_UPSTREAM_CAPS, other] });
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa([...LOGIN_CAPS, ...ALWAYS, 'TOP', 'PIPELINING']));
  });

  test('an upstream not contacted yet: none of TOP, UIDL, PIPELINING is promised', async (t) => {
    const fd = await pop3Frontdoor(t, 'implicit', { upstreams: [POP3_UPSTREAM_CAPS, undefined] });
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa([...LOGIN_CAPS, ...ALWAYS]));
  });
});

describe('USER/PASS and AUTH', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor({ protocol: 'pop3', tls: 'implicit' }, { limits: { badCommands: 100 } });
  });
  after(() => fd.close());
  const last = () => fd.requests.at(-1)!;

  test('USER then PASS: +OK, and the core gets login, the password with its spaces, mechanism, protocol', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, 'USER alice@example.com'), '+OK Send PASS');
    assert.equal(await send(c, 'PASS  my secret pw '), LOGGED_IN);
    const req = last();
    assert.deepEqual(
      [req.protocol, req.login, req.password, req.mechanism, req.client.secure, req.client.listener],
      ['pop3', 'alice@example.com', ' my secret pw ', 'USER/PASS', true, 'test'],
    );
    assert.equal(await logins(fd, 'success'), 1);
  });

  test('USER and PASS carry UTF-8: a non-ASCII login name and password arrive intact', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, 'user jörg@exämple.de'), '+OK Send PASS');
    assert.equal(await send(c, 'pass pä ss'), LOGGED_IN);
    assert.deepEqual([last().login, last().password], ['jörg@exämple.de', 'pä ss']);
    const d = await openGreeted(t, fd, true);
    const before = fd.requests.length;
    d.write(Buffer.concat([Buffer.from('USER a'), Buffer.from([0xff, 0xfe]), Buffer.from('\r\n')]));
    assert.equal(await d.readLine(), '-ERR USER and PASS take UTF-8 text');
    assert.equal(await send(d, 'PASS pw'), '-ERR USER first');
    assert.equal(fd.requests.length, before);
  });

  test('PASS without USER, USER without a name, and a second PASS: refused, the core never asked', async (t) => {
    const before = fd.requests.length;
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, 'PASS secret'), '-ERR USER first');
    assert.equal(await send(c, 'USER'), '-ERR Syntax: USER name');
    assert.equal(await send(c, `USER ${'x'.repeat(256)}`), '-ERR Syntax: USER name');
    assert.equal(fd.requests.length, before);
  });

  test('AUTH PLAIN with an initial response; an authzid equal to the login is accepted', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, `AUTH PLAIN ${plainIr('bob', 'pw 2', 'bob')}`), LOGGED_IN);
    assert.deepEqual([last().login, last().password, last().mechanism], ['bob', 'pw 2', 'AUTH PLAIN']);
  });

  test('AUTH PLAIN with a "+ " continuation', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, 'auth plain'), '+ ');
    assert.equal(await send(c, plainIr('carol', 'pw3')), LOGGED_IN);
    assert.deepEqual([last().login, last().password, last().mechanism], ['carol', 'pw3', 'AUTH PLAIN']);
  });

  test('AUTH LOGIN asks Username: and Password: in base64; with the user on the AUTH line only the password', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.equal(await send(c, 'AUTH LOGIN'), USERNAME_CHALLENGE);
    assert.equal(await send(c, b64('dave')), PASSWORD_CHALLENGE);
    assert.equal(await send(c, b64('pw 4')), LOGGED_IN);
    assert.deepEqual([last().login, last().password, last().mechanism], ['dave', 'pw 4', 'AUTH LOGIN']);
    const d = await openGreeted(t, fd, true);
    assert.equal(await send(d, `AUTH LOGIN ${b64('erin')}`), PASSWORD_CHALLENGE);
    assert.equal(await send(d, b64('pw5')), LOGGED_IN);
    assert.deepEqual([last().login, last().password, last().mechanism], ['erin', 'pw5', 'AUTH LOGIN']);
  });

  test('* cancels at every step; bad base64; malformed PLAIN; unknown mechanism; bad syntax; foreign authzid', async (t) => {
    const before = fd.requests.length;
    const c = await openGreeted(t, fd, true);
    const cancelled = '-ERR Authentication cancelled';
    assert.equal(await send(c, 'AUTH PLAIN'), '+ ');
    assert.equal(await send(c, '*'), cancelled);
    assert.equal(await send(c, 'AUTH LOGIN'), USERNAME_CHALLENGE);
    assert.equal(await send(c, '*'), cancelled);
    assert.equal(await send(c, `AUTH LOGIN ${b64('frank')}`), PASSWORD_CHALLENGE);
    assert.equal(await send(c, '*'), cancelled);
    assert.equal(await send(c, 'AUTH LOGIN ='), USERNAME_CHALLENGE, '= on the AUTH line: no user yet');
    assert.equal(await send(c, '*'), cancelled);
    assert.equal(await send(c, 'AUTH PLAIN !!!!'), '-ERR Invalid base64');
    assert.equal(await send(c, 'AUTH PLAIN'), '+ ');
    assert.equal(await send(c, 'not base64'), '-ERR Invalid base64');
    assert.equal(await send(c, 'AUTH LOGIN'), USERNAME_CHALLENGE);
    assert.equal(await send(c, b64('gina')), PASSWORD_CHALLENGE);
    assert.equal(await send(c, 'abc'), '-ERR Invalid base64');
    assert.equal(await send(c, 'AUTH LOGIN'), USERNAME_CHALLENGE);
    assert.equal(await send(c, ''), '-ERR Empty user name');
    assert.equal(await send(c, 'AUTH PLAIN ='), '-ERR Malformed PLAIN response');
    assert.equal(await send(c, `AUTH PLAIN ${b64('no-nuls')}`), '-ERR Malformed PLAIN response');
    assert.equal(await send(c, 'AUTH XOAUTH2 abc'), '-ERR Unsupported authentication mechanism');
    assert.equal(await send(c, 'AUTH CRAM-MD5'), '-ERR Unsupported authentication mechanism');
    assert.equal(await send(c, 'AUTH PLAIN abcd efgh'), '-ERR Syntax: AUTH mechanism [initial-response]');
    assert.equal(
      await send(c, `AUTH PLAIN ${plainIr('alice', 'pw', 'mallory')}`),
      '-ERR [AUTH] Authorization identity must be empty or the login name',
    );
    assert.equal(fd.requests.length, before, 'none of these reached the core');
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa([...LOGIN_CAPS, ...ALWAYS, ...SHARED]), 'goes on');
  });

  test('bare AUTH lists the mechanisms, multi-line', async (t) => {
    const c = await openGreeted(t, fd, true);
    assert.deepEqual(await sendMulti(c, 'AUTH'), ['+OK Mechanisms follow', 'PLAIN', 'LOGIN', '.']);
  });

  test('APOP is refused with why; STAT RETR NOOP LIST DELE before login are refused and counted as bad', async (t) => {
    const bad = await pop3Frontdoor(t, 'implicit', { limits: { badCommands: 6 } });
    const c = await openGreeted(t, bad, true);
    assert.equal(
      await send(c, 'APOP alice c4c9334bac560ecc979e58001b3e22fb'),
      '-ERR APOP is not supported here: log in with USER/PASS or AUTH and the app password',
    );
    for (const cmd of ['STAT', 'RETR 1', 'noop', 'LIST']) assert.equal(await send(c, cmd), UNKNOWN, cmd);
    c.write('DELE 1\r\nCAPA\r\n');
    assert.equal(
      await c.readToClose(),
      `${UNKNOWN}\r\n-ERR Too many invalid commands\r\n`,
      'the sixth bad command closes; nothing after it is answered',
    );
    assert.equal(await rejections(bad, 'too_many_bad_commands'), 1);
    assert.equal(bad.requests.length, 0);
  });

  test('QUIT before login: +OK and closed', async (t) => {
    const c = await openGreeted(t, fd, true);
    c.write('QUIT\r\n');
    assert.equal(await c.readToClose(), '+OK Bye\r\n');
  });

  test('upstreamKeeps: after CAPA it refuses an upstream lacking a promised capability', async (t) => {
    const c = await openGreeted(t, fd, true);
    await sendMulti(c, 'CAPA');
    assert.equal(await send(c, `AUTH PLAIN ${plainIr('henry', 'pw')}`), LOGGED_IN);
    const keeps = last().upstreamKeeps;
    assert.ok(keeps, 'present after CAPA');
    assert.equal(keeps(POP3_UPSTREAM_CAPS), true);
    assert.equal(keeps(['top', 'uidl', 'pipelining']), true, 'keywords compare case-insensitively');
    assert.equal(keeps(POP3_UPSTREAM_CAPS.filter((x) => x !== 'UIDL')), false);
    assert.equal(keeps(POP3_UPSTREAM_CAPS.filter((x) => x !== 'PIPELINING')), false);
    const d = await openGreeted(t, fd, true);
    assert.equal(await send(d, 'USER ida'), '+OK Send PASS');
    assert.equal(await send(d, 'PASS pw'), LOGGED_IN);
    assert.equal(last().upstreamKeeps, undefined, 'no CAPA, no promise');
  });

  test('USER, PASS, STAT and RETR 1 in one write: +OK, then STAT and RETR reach the upstream in order and come back spliced', async (t) => {
    const c = await openGreeted(t, fd, true);
    const behind = 'STAT\r\nRETR 1\r\n';
    c.write(`USER judy\r\nPASS pw\r\n${behind}`);
    assert.equal(await c.readLine(), '+OK Send PASS');
    assert.equal(await c.readLine(), LOGGED_IN);
    assert.equal(await c.readLine(), 'STAT');
    assert.equal(await c.readLine(), 'RETR 1');
    await until(() => fd.upstream.text().endsWith(behind), 5000, 'the pipelined bytes to reach upstream');
    assert.equal(last().login, 'judy');
    await assertSplicedUntilClosed(fd, c);
  });
});

/** RFC 3206 response code per failure; the text is the reply table's. */
const FAILURE_CODES: Record<FailureReason, string> = {
  bad_credentials: 'AUTH',
  account_disabled: 'AUTH',
  limited: 'SYS/TEMP',
  session_limit: 'SYS/TEMP',
  privacy_required: 'AUTH',
  no_grant: 'AUTH',
  needs_consent: 'AUTH',
  token_unavailable: 'SYS/TEMP',
  upstream_rejected: 'AUTH',
  upstream_unavailable: 'SYS/TEMP',
  authorization_failed: 'AUTH',
  protocol_disabled: 'AUTH',
  scope_missing: 'AUTH',
  mailbox_in_use: 'IN-USE',
  protocol_error: 'SYS/TEMP',
  timeout: 'SYS/TEMP',
  aborted: 'SYS/TEMP',
};

describe('login failures', () => {
  test('every failure reason is answered -ERR [CODE] with its text, and counted', async (t) => {
    const { fd, c, refuse } = await refusingFrontdoor(t, 'pop3');
    const reasons = LOGIN_RESULTS.filter((r) => r !== 'success' && r !== 'aborted');
    for (const [i, reason] of reasons.entries()) {
      refuse(reason);
      const want = `-ERR [${FAILURE_CODES[reason]}] ${pop3Reply(reason).text}`;
      // Alternate the two ways in so both carry the failure line.
      if (i % 2 === 0) {
        assert.equal(await send(c, 'USER alice'), '+OK Send PASS');
        assert.equal(await send(c, 'PASS Hunter2Secret'), want, reason);
      } else assert.equal(await send(c, `AUTH PLAIN ${plainIr('alice', 'Hunter2Secret')}`), want, reason);
      assert.equal(await logins(fd, reason), 1, reason);
    }
    assert.equal(fd.requests.length, reasons.length);
  });

  test('the extra words of a failure follow its text: where to reconnect, what to enable, whom to ask', async (t) => {
    const r = await refusingFrontdoor(t, 'pop3');
    await assertFailureWords(r, send, PASSWORD_CHALLENGE, [
      [
        'needs_consent',
        'Reconnect the mailbox at https://proxy.example/connect',
        '-ERR [AUTH] Mailbox authorization expired. Reconnect the mailbox at https://proxy.example/connect',
      ],
      [
        'protocol_disabled',
        'Enable POP for the mailbox',
        '-ERR [AUTH] The mail provider has POP3 switched off for this mailbox; the administrator must enable it. Enable POP for the mailbox',
      ],
      [
        'scope_missing',
        'Reconnect the mailbox at https://proxy.example/connect',
        '-ERR [AUTH] The mailbox was connected without permission for POP3. Reconnect the mailbox at https://proxy.example/connect',
      ],
      ['no_grant', '', '-ERR [AUTH] Mailbox not connected yet; contact your administrator'],
      ['account_disabled', '', '-ERR [AUTH] Account disabled; contact your administrator'],
      ['mailbox_in_use', '', '-ERR [IN-USE] Mailbox in use by another session; try again later'],
    ]);
  });

  test('a login that runs out of time: -ERR [SYS/TEMP], the core is aborted, the session goes on', async (t) => {
    const { fd, c } = await stalledFrontdoor(t, 'pop3');
    assert.equal(await send(c, 'USER alice'), '+OK Send PASS');
    assert.equal(await send(c, 'PASS pw'), '-ERR [SYS/TEMP] Timed out; try again later');
    assert.equal(fd.signals[0]!.aborted, true);
    assert.equal(await logins(fd, 'timeout'), 1);
    assert.equal(await send(c, 'PASS pw'), '-ERR USER first', 'PASS does not reuse the earlier USER');
  });

  test('three wrong passwords close the connection; the fourth is never tried; outages do not count', async (t) => {
    const { fd, c, refuse } = await refusingFrontdoor(t, 'pop3', {
      first: 'upstream_unavailable',
      limits: {},
    });
    for (let i = 0; i < 3; i++)
      assert.equal(
        await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`),
        '-ERR [SYS/TEMP] Mail server unavailable; try again later',
      );
    refuse('bad_credentials');
    assert.equal(
      await send(c, `AUTH PLAIN ${plainIr('alice', 'guess1')}`),
      '-ERR [AUTH] Invalid credentials',
    );
    refuse('limited');
    assert.equal(
      await send(c, `AUTH PLAIN ${plainIr('alice', 'guess2')}`),
      '-ERR [SYS/TEMP] Too many failed logins; try again later',
    );
    refuse('bad_credentials');
    c.write('USER alice\r\nPASS guess3\r\nUSER alice\r\nPASS guess4\r\n');
    assert.equal(
      await c.readToClose(),
      '+OK Send PASS\r\n-ERR [AUTH] Invalid credentials\r\n-ERR Too many failed logins on this connection\r\n',
    );
    assert.equal(fd.requests.length, 6);
    assert.equal(await rejections(fd, 'too_many_failed_logins'), 1);
  });
});

describe('cleartext and STLS', () => {
  test('USER, PASS and AUTH before STLS: -ERR [AUTH], counted privacy_required, the core never sees the password', async (t) => {
    const fd = await pop3Frontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    assert.deepEqual(await sendMulti(c, 'CAPA'), capa(['STLS', ...ALWAYS, ...SHARED]));
    assert.equal(await send(c, 'USER alice'), PRIVACY);
    assert.equal(await send(c, 'PASS pw'), '-ERR USER first', 'the refused USER is not remembered');
    assert.equal(await send(c, `AUTH PLAIN ${plainIr('alice', 'pw')}`), PRIVACY);
    assert.equal(await send(c, 'AUTH LOGIN'), PRIVACY);
    assert.deepEqual(await sendMulti(c, 'AUTH'), ['+OK Mechanisms follow', '.'], 'none offered yet');
    assert.equal(fd.requests.length, 0);
    assert.equal(await logins(fd, 'privacy_required'), 3);
    assert.equal(await send(c, 'STLS'), '+OK Begin TLS negotiation now');
    await c.startTls();
    assert.equal(await send(c, 'USER alice'), '+OK Send PASS');
    assert.equal(await send(c, 'PASS pw'), LOGGED_IN);
    assert.equal(fd.requests[0]!.client.secure, true);
    assert.equal(fd.requests[0]!.upstreamKeeps, undefined, 'STLS forgets the cleartext CAPA');
  });

  test('a plain listener refuses login the same way', async (t) => {
    const fd = await pop3Frontdoor(t, 'none');
    const c = await openGreeted(t, fd, false);
    assert.equal(await send(c, 'USER alice'), PRIVACY);
    assert.equal(await logins(fd, 'privacy_required'), 1);
    const open2 = await pop3Frontdoor(t, 'none', { cleartext: true });
    const d = await openGreeted(t, open2, false);
    assert.equal(await send(d, 'USER alice'), '+OK Send PASS');
    assert.equal(await send(d, 'PASS pw'), LOGGED_IN);
    assert.equal(open2.requests[0]!.client.secure, false);
  });

  test('bytes pipelined behind STLS: -ERR, closed, counted starttls_injection', async (t) => {
    const fd = await pop3Frontdoor(t, 'starttls');
    const c = await openGreeted(t, fd, false);
    c.write('STLS\r\nUSER mallory\r\nPASS evil\r\n');
    assert.equal(await c.readToClose(), '-ERR Data after STLS refused\r\n');
    assert.equal(fd.requests.length, 0);
    assert.equal(await rejections(fd, 'starttls_injection'), 1);
  });

  test('a USER given before STLS is forgotten after it', async (t) => {
    const fd = await pop3Frontdoor(t, 'starttls', { cleartext: true });
    const c = await openGreeted(t, fd, false);
    assert.equal(await send(c, 'USER alice'), '+OK Send PASS');
    assert.equal(await send(c, 'STLS'), '+OK Begin TLS negotiation now');
    await c.startTls();
    assert.equal(await send(c, 'PASS pw'), '-ERR USER first');
    assert.equal(fd.requests.length, 0);
  });
});

describe('limits before login', () => {
  preauthLimitTests('pop3', {
    login: 'login',
    anAnswer: 'a POP3',
    exchange: async (c, line) => (await sendMulti(c, line)).join('\n'),
    valid: ['CAPA', CAPA_HEAD],
    filler: ['STAT', UNKNOWN],
    talkFirst: ['USER bot', ''],
    tooManyCommands: '-ERR Too many commands before login\r\n',
    idle: ['-ERR [SYS/TEMP]', '-ERR [SYS/TEMP] Autologout; idle too long\r\n'],
    lineTooLong: ['-ERR', '-ERR Line too long\r\n'],
    shutdown: ['-ERR [SYS/TEMP]', '-ERR [SYS/TEMP] Server shutting down, try again later\r\n'],
  });
});
