import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { WireLimits } from '../../../src/protocols/imap/limits.js';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { type Frontdoor, metricValue, startFrontdoor } from './harness.js';

async function withFrontdoor(
  t: { after: (fn: () => Promise<void>) => void },
  limits: Partial<WireLimits> = {},
): Promise<Frontdoor> {
  const fd = await startFrontdoor({ tls: 'none', allow_cleartext_login: true }, { limits });
  t.after(() => fd.close());
  return fd;
}

const rejections = (fd: Frontdoor, reason: string) =>
  metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { reason });

describe('pre-auth policy', () => {
  test('idle too long before login: * BYE Autologout and close', async (t) => {
    const fd = await withFrontdoor(t, { preauthIdleMs: 150 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    assert.equal(await c.readToClose(), '* BYE Autologout; idle too long\r\n');
    assert.equal(await rejections(fd, 'idle_timeout'), 1);
  });

  test('too many bad or unknown commands: BAD each, then * BYE and close', async (t) => {
    const fd = await withFrontdoor(t, { badCommands: 3 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    assert.deepEqual(await c.command('a', 'SELECT INBOX'), [
      'a BAD Unknown command or not allowed before login',
    ]);
    assert.deepEqual(await c.command('b', 'NOOP extra'), ['b BAD Unexpected arguments']);
    c.write('c EXAMINE Drafts\r\nd NOOP\r\n');
    assert.equal(
      await c.readToClose(),
      'c BAD Unknown command or not allowed before login\r\n* BYE Too many invalid commands\r\n',
      'nothing after the limit is answered',
    );
    assert.equal(await rejections(fd, 'too_many_bad_commands'), 1);
  });

  test('a connection cannot idle along before login for ever: valid commands are capped too', async (t) => {
    const fd = await withFrontdoor(t, { preauthCommands: 5 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    for (let i = 1; i <= 5; i++)
      assert.deepEqual(await c.command(`n${i}`, 'NOOP'), [`n${i} OK NOOP completed`]);
    c.write('n6 NOOP\r\nn7 NOOP\r\n');
    assert.equal(await c.readToClose(), '* BYE Too many commands before login\r\n');
    assert.equal(await rejections(fd, 'too_many_commands'), 1);
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { protocol: 'imap' }),
      1,
    );
  });

  test('wrong passwords on one connection are capped; outages do not count', async (t) => {
    let reason: 'bad_credentials' | 'upstream_unavailable' = 'upstream_unavailable';
    const fd = await startFrontdoor(
      { tls: 'none', allow_cleartext_login: true },
      { limits: { failedLogins: 2 }, decide: () => ({ ok: false, reason }) },
    );
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    for (const tag of ['u1', 'u2', 'u3'])
      assert.match((await c.command(tag, 'LOGIN alice pw'))[0] ?? '', / NO \[UNAVAILABLE\]/);
    reason = 'bad_credentials';
    assert.match((await c.command('b1', 'LOGIN alice guess1'))[0] ?? '', /^b1 NO \[AUTHENTICATIONFAILED\]/);
    c.write('b2 LOGIN alice guess2\r\nb3 LOGIN alice guess3\r\n');
    assert.equal(
      await c.readToClose(),
      'b2 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n* BYE Too many failed logins on this connection\r\n',
      'the third guess is never tried',
    );
    assert.equal(fd.requests.length, 5);
    assert.equal(await rejections(fd, 'too_many_failed_logins'), 1);
  });

  test('an HTTP request line is closed without an IMAP answer', async (t) => {
    const fd = await withFrontdoor(t);
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(await c.readToClose(), '');
    assert.equal(await rejections(fd, 'http_request'), 1);
  });

  test('talking before the greeting is closed (greeting delay on)', async (t) => {
    const fd = await withFrontdoor(t, { greetingDelayMs: 10_000 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    c.write('a LOGIN alice pw\r\n');
    assert.equal(await c.readToClose(), '', 'no greeting, no reply');
    assert.equal(fd.requests.length, 0);
    assert.equal(await rejections(fd, 'talk_before_greeting'), 1);
  });

  test('line one byte over the limit: * BYE and close; at the limit: answered', async (t) => {
    const fd = await withFrontdoor(t, { lineBytes: 600 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const at = `a NOOP ${'x'.repeat(600 - 7)}`;
    assert.deepEqual(await c.command('a', at.slice(2)), ['a BAD Unexpected arguments']);
    c.write(`${at}y\r\n`);
    assert.equal(await c.readToClose(), '* BYE Command line too long\r\n');
    assert.equal(await rejections(fd, 'line_too_long'), 1);
  });

  test('literal over the limit is refused before the client sends it', async (t) => {
    const fd = await withFrontdoor(t, { literalBytes: 1024 });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    c.write('a LOGIN {1025}\r\n');
    assert.equal(await c.readToClose(), '* BYE Literal too large\r\n');
    assert.equal(await rejections(fd, 'literal_too_long'), 1);
  });

  test('a sychronizing literal gets + before the client sends it; LITERAL+ does not wait', async (t) => {
    const fd = await withFrontdoor(t);
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    c.write('a LOGIN {5}\r\n');
    assert.equal(await c.readLine(), '+ Ready for literal data');
    c.write('alice {7+}\r\npa"ss\\w\r\n');
    assert.match(await c.readLine(), /^a OK /);
    assert.deepEqual([fd.requests[0]!.login, fd.requests[0]!.password], ['alice', 'pa"ss\\w']);
  });

  test('server shutdown ends pre-auth sessions with * BYE', async (t) => {
    const fd = await startFrontdoor({ tls: 'none' });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const closing = fd.close();
    assert.equal(await c.readToClose(), '* BYE Server shutting down\r\n');
    await closing;
  });

  test('shutdown: pre-auth sessions get * BYE at once, spliced ones are closed after drainMs and released', async (t) => {
    const fd = await startFrontdoor({ tls: 'none', allow_cleartext_login: true });
    t.after(() => fd.upstream.stop());
    const spliced = await RawImapClient.connect(fd.port);
    t.after(() => spliced.close());
    await spliced.readLine();
    assert.match((await spliced.command('a', 'LOGIN alice pw')).at(-1)!, /^a OK /);
    const pre = await RawImapClient.connect(fd.port);
    t.after(() => pre.close());
    await pre.readLine();
    await fd.listener.close({ drainMs: 50 });
    assert.equal(await pre.readToClose(), '* BYE Server shutting down\r\n');
    await spliced.waitClosed();
    await until(() => fd.releases > 0, 5000, 'the spliced session to be released');
    assert.equal(fd.releases, 1);
    assert.equal(fd.listener.connections, 0);
  });
});
