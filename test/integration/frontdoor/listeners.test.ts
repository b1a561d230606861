import assert from 'node:assert/strict';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { type Frontdoor, metricValue, startFrontdoor } from './harness.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('starttls listener', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor({ tls: 'starttls' });
  });
  after(() => fd.close());

  test('cleartext: greeting offers STARTTLS and LOGINDISABLED, no AUTH=; LOGIN and AUTHENTICATE get PRIVACYREQUIRED', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    const greeting = await c.readLine();
    assert.match(greeting, /^\* OK \[CAPABILITY IMAP4rev1 LITERAL\+ SASL-IR ID STARTTLS LOGINDISABLED\] /);
    assert.doesNotMatch(greeting, /AUTH=/);
    assert.deepEqual(await c.command('a', 'LOGIN alice secret'), [
      'a NO [PRIVACYREQUIRED] Use STARTTLS or implicit TLS before logging in',
    ]);
    assert.deepEqual(await c.command('b', 'AUTHENTICATE PLAIN'), [
      'b NO [PRIVACYREQUIRED] Use STARTTLS or implicit TLS before logging in',
    ]);
    assert.equal(fd.requests.length, 0, 'the handler never sees a cleartext password');
    assert.equal(await metricValue(fd.metrics, 'imap_proxy_logins_total', { result: 'privacy_required' }), 2);
  });

  test('STARTTLS upgrade: capabilities change, login reaches the handler over TLS', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    assert.deepEqual(await c.command('s', 'STARTTLS'), ['s OK Begin TLS negotiation now']);
    await c.startTls();
    const caps = await c.command('c', 'CAPABILITY');
    assert.equal(caps[0], '* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN');
    assert.deepEqual(await c.command('d', 'STARTTLS'), ['d BAD TLS is already active']);
    const reply = await c.command('e', 'LOGIN alice "s3cret pw"');
    assert.equal(reply.at(-1), 'e OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE] Logged in');
    const req = fd.requests.at(-1)!;
    assert.equal(req.login, 'alice');
    assert.equal(req.password, 's3cret pw');
    assert.equal(req.client.secure, true);
  });

  test('STARTTLS injection: commands pipelined behind STARTTLS are refused and the connection closed', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const before = fd.requests.length;
    c.write('s STARTTLS\r\nx LOGIN mallory evil\r\n');
    const rest = await c.readToClose();
    assert.doesNotMatch(rest, /s OK/);
    assert.match(rest, /^\* BYE /);
    assert.equal(fd.requests.length, before);
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { reason: 'starttls_injection' }),
      1,
    );
  });
});

describe('plain listener with allow_cleartext_login', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor({ tls: 'none', allow_cleartext_login: true });
  });
  after(() => fd.close());

  test('greeting offers AUTH=PLAIN without STARTTLS; STARTTLS is a BAD command', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    assert.match(
      await c.readLine(),
      /^\* OK \[CAPABILITY IMAP4rev1 LITERAL\+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\] /,
    );
    assert.deepEqual(await c.command('a', 'STARTTLS'), ['a BAD STARTTLS not available']);
  });

  test('pipelined commands behind LOGIN reach upstream after the login, in order, and come back spliced', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const behind = 'b SELECT INBOX\r\nc FETCH 1 (BODY[]) {5+}\r\nhello\r\nd NOOP\r\n';
    c.write(`a LOGIN bob pw\r\n${behind}`);
    assert.equal(await c.readLine(), 'a OK [CAPABILITY IMAP4rev1 IDLE NAMESPACE] Logged in');
    assert.equal(await c.readLine(), '* 3 EXISTS', 'bytes upstream sent before the splice come first');
    const echoed = [await c.readLine(), await c.readLine(), await c.readLine(), await c.readLine()];
    assert.deepEqual(echoed, ['b SELECT INBOX', 'c FETCH 1 (BODY[]) {5+}', 'hello', 'd NOOP']);
    assert.equal(fd.upstream.text(), behind);
    c.write('e LOGOUT\r\n');
    assert.equal(await c.readLine(), 'e LOGOUT');
    assert.ok(
      (await metricValue(fd.metrics, 'imap_proxy_spliced_bytes_total', {
        direction: 'client_to_upstream',
      })) >=
        Buffer.byteLength(behind) + 10,
    );
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_active_sessions', { listener: 'test', phase: 'spliced' }),
      1,
    );
    c.close();
    await c.waitClosed();
    await until(() => fd.releases > 0, 5000, 'the spliced session to be released');
    assert.equal(fd.releases, 1);
  });

  test('the spliced session ends when upstream closes, and release() runs exactly once', async (t) => {
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const before = fd.releases;
    await c.command('a', 'LOGIN bob pw');
    await fd.upstream.stop().catch(() => {});
    await c.waitClosed();
    await until(() => fd.releases > before, 5000, 'the spliced session to be released');
    assert.equal(fd.releases, before + 1);
    await fd.upstream.start();
  });
});

describe('implicit TLS listener', () => {
  let fd: Frontdoor;
  before(async () => {
    fd = await startFrontdoor({ tls: 'implicit' });
  });
  after(() => fd.close());

  test('greeting over TLS offers AUTH=PLAIN AUTH=LOGIN and no STARTTLS', async (t) => {
    const c = await RawImapClient.connect(fd.port, { tls: true });
    t.after(() => c.close());
    assert.match(
      await c.readLine(),
      /^\* OK \[CAPABILITY IMAP4rev1 LITERAL\+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN\] /,
    );
    assert.deepEqual(await c.command('i', 'ID ("name" "test")'), [
      '* ID ("name" "imap-oauth-proxy")',
      'i OK ID completed',
    ]);
    assert.deepEqual(await c.command('n', 'NOOP'), ['n OK NOOP completed']);
    assert.deepEqual(await c.command('l', 'LOGOUT'), ['* BYE Logging out', 'l OK LOGOUT completed']);
    await c.waitClosed();
  });

  test('AUTHENTICATE PLAIN with SASL-IR, with a continuation, and cancelled with *', async (t) => {
    const c = await RawImapClient.connect(fd.port, { tls: true });
    t.after(() => c.close());
    await c.readLine();
    assert.deepEqual(await c.command('x', 'AUTHENTICATE PLAIN abc'), ['x BAD Invalid base64']);
    c.write('a AUTHENTICATE PLAIN\r\n');
    assert.equal(await c.readLine(), '+ ');
    c.write('*\r\n');
    assert.equal(await c.readLine(), 'a BAD Authentication aborted');
    c.write('b AUTHENTICATE PLAIN\r\n');
    assert.equal(await c.readLine(), '+ ');
    c.write(`${b64('other\0alice\0pw')}\r\n`);
    assert.equal(
      await c.readLine(),
      'b NO [AUTHORIZATIONFAILED] Authorization identity must be empty or the login name',
    );
    assert.equal(fd.requests.length, 0);
    c.write('c AUTHENTICATE PLAIN\r\n');
    assert.equal(await c.readLine(), '+ ');
    c.write(`${b64('alice\0alice\0pä ss')}\r\n`);
    assert.match(await c.readLine(), /^c OK \[CAPABILITY /);
    assert.deepEqual(
      [fd.requests[0]!.login, fd.requests[0]!.password, fd.requests[0]!.mechanism],
      ['alice', 'pä ss', 'AUTHENTICATE PLAIN'],
    );
  });

  test('AUTHENTICATE PLAIN with an initial response', async (t) => {
    const c = await RawImapClient.connect(fd.port, { tls: true });
    t.after(() => c.close());
    await c.readLine();
    assert.match((await c.command('a', `AUTHENTICATE PLAIN ${b64('\0carol\0pw2')}`)).at(-1)!, /^a OK /);
    assert.deepEqual([fd.requests.at(-1)!.login, fd.requests.at(-1)!.password], ['carol', 'pw2']);
  });

  test('AUTHENTICATE LOGIN asks Username: and Password: in base64', async (t) => {
    const c = await RawImapClient.connect(fd.port, { tls: true });
    t.after(() => c.close());
    await c.readLine();
    c.write('a AUTHENTICATE LOGIN\r\n');
    assert.equal(await c.readLine(), `+ ${b64('Username:')}`);
    c.write(`${b64('dave')}\r\n`);
    assert.equal(await c.readLine(), `+ ${b64('Password:')}`);
    c.write(`${b64('pw3')}\r\n`);
    assert.match(await c.readLine(), /^a OK /);
    const req = fd.requests.at(-1)!;
    assert.deepEqual([req.login, req.password, req.mechanism], ['dave', 'pw3', 'AUTHENTICATE LOGIN']);
  });

  test('unsupported mechanism gets NO; a non-TLS client is refused at the handshake', async (t) => {
    const c = await RawImapClient.connect(fd.port, { tls: true });
    t.after(() => c.close());
    await c.readLine();
    assert.deepEqual(await c.command('a', 'AUTHENTICATE XOAUTH2'), [
      'a NO Unsupported authentication mechanism',
    ]);
    const p = await RawImapClient.connect(fd.port);
    p.write('a LOGIN alice pw\r\n');
    assert.equal(await p.readToClose(), '');
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { reason: 'tls_handshake' }),
      1,
    );
  });

  test('TLS 1.2 and 1.3 are accepted; the server refuses TLS 1.1', async () => {
    const attempt = async (maxVersion: 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3') => {
      // SECLEVEL=0 lets this client offer TLS 1.1 at all, so the refusal is the server's.
      const s = tlsConnect({
        port: fd.port,
        host: '127.0.0.1',
        rejectUnauthorized: false,
        minVersion: 'TLSv1',
        maxVersion,
        ciphers: 'DEFAULT:@SECLEVEL=0',
      });
      try {
        await once(s, 'secureConnect');
        return s.getProtocol();
      } catch (err) {
        return (err as NodeJS.ErrnoException).code;
      } finally {
        s.destroy();
      }
    };
    assert.equal(await attempt('TLSv1.1'), 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    assert.equal(await attempt('TLSv1.2'), 'TLSv1.2');
    assert.equal(await attempt('TLSv1.3'), 'TLSv1.3');
  });
});
