import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, test } from 'node:test';
import type { LoginOutcome } from '../../../src/core/types.js';
import { LOGIN_RESULTS, ProxyError } from '../../../src/errors.js';
import { imapReply } from '../../../src/protocols/imap/replies.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { EchoUpstream, metricValue, startFrontdoor } from './harness.js';

const FAILURES = LOGIN_RESULTS.filter((r) => r !== 'success');

describe('login outcomes', () => {
  test('every failure reason is answered with its RFC 5530 code and text, and counted', async (t) => {
    let next: LoginOutcome = { ok: false, reason: 'bad_credentials' };
    const fd = await startFrontdoor({ tls: 'none', allow_cleartext_login: true }, { decide: () => next });
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    for (const reason of FAILURES) {
      next = { ok: false, reason };
      const r = imapReply(reason);
      assert.deepEqual(
        await c.command('a', 'LOGIN user "secret pw"'),
        [`a NO [${r.code}] ${r.text}`],
        reason,
      );
      assert.equal(
        await metricValue(fd.metrics, 'imap_proxy_logins_total', { protocol: 'imap', result: reason }),
        1,
        reason,
      );
    }
    next = { ok: false, reason: 'needs_consent', clientText: 'Reconnect at https://proxy.example/connect' };
    assert.deepEqual(await c.command('b', 'LOGIN user pw'), [
      'b NO [EXPIRED] Mailbox authorization expired. Reconnect at https://proxy.example/connect',
    ]);
    const text = await fd.metrics.registry.metrics();
    assert.match(
      text,
      /imap_proxy_login_duration_seconds_count\{protocol="imap",result="bad_credentials"\} 1\n/,
    );
  });

  test('a password never appears in a reply, even when the handler throws', async (t) => {
    const fd = await startFrontdoor(
      { tls: 'none', allow_cleartext_login: true },
      {
        decide: () => {
          throw new ProxyError('token_unavailable', 'token endpoint down', { clientText: 'Try later' });
        },
      },
    );
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    const lines = await c.command('a', 'LOGIN alice Hunter2Secret');
    assert.deepEqual(lines, [
      'a NO [UNAVAILABLE] Authorization server unavailable; try again later. Try later',
    ]);
    assert.ok(!lines.join('').includes('Hunter2Secret'));
  });

  test('login timeout: NO [UNAVAILABLE], the handler is aborted, a late upstream is given back', async (t) => {
    const late = new EchoUpstream();
    await late.start();
    t.after(() => late.stop());
    let released = 0;
    let resolveLate!: () => void;
    const lateDone = new Promise<void>((r) => {
      resolveLate = r;
    });
    const fd = await startFrontdoor(
      { tls: 'none', allow_cleartext_login: true },
      {
        limits: { loginTimeoutMs: 100 },
        decide: async (_req, signal) => {
          await once(signal, 'abort');
          const socket = connect(late.port, '127.0.0.1');
          await once(socket, 'connect');
          socket.once('close', resolveLate);
          return {
            ok: true,
            upstream: { socket, capabilities: [], buffered: Buffer.alloc(0) },
            release: () => {
              released++;
            },
            accountLabel: 'x',
          };
        },
      },
    );
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    assert.deepEqual(await c.command('a', 'LOGIN alice pw'), [
      'a NO [UNAVAILABLE] Timed out; try again later',
    ]);
    assert.equal(fd.signals[0]!.aborted, true);
    await withDeadline(lateDone, 5000, 'the late upstream to be closed');
    assert.equal(released, 1);
    assert.deepEqual(
      await c.command('b', 'NOOP'),
      ['b OK NOOP completed'],
      'the session goes on after a timeout',
    );
  });

  test('client disconnect during login aborts the handler signal and counts an aborted login', async (t) => {
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => {
      entered = r;
    });
    const fd = await startFrontdoor(
      { tls: 'none', allow_cleartext_login: true },
      {
        decide: async (_req, signal) => {
          entered();
          await once(signal, 'abort');
          return { ok: false, reason: 'timeout' };
        },
      },
    );
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    await c.readLine();
    c.write('a LOGIN alice pw\r\n');
    await withDeadline(inHandler, 5000, 'the login handler to start');
    c.close();
    if (!fd.signals[0]!.aborted)
      await withDeadline(once(fd.signals[0]!, 'abort'), 5000, 'the handler signal to abort');
    assert.equal(fd.signals[0]!.aborted, true);
    assert.equal(
      await metricValue(fd.metrics, 'imap_proxy_active_sessions', { listener: 'test', phase: 'preauth' }),
      0,
    );
    // The abandoned attempt is counted once, as 'aborted', and as nothing else.
    await until(
      async () => (await metricValue(fd.metrics, 'imap_proxy_logins_total', { result: 'aborted' })) === 1,
      5000,
      'the aborted login to be counted',
    );
    assert.equal(await metricValue(fd.metrics, 'imap_proxy_logins_total', { result: 'timeout' }), 0);
  });

  test('one login at a time: a second command waits until the first login is answered', async (t) => {
    let finish!: (o: LoginOutcome) => void;
    const fd = await startFrontdoor(
      { tls: 'none', allow_cleartext_login: true },
      {
        decide: () =>
          new Promise<LoginOutcome>((r) => {
            finish = r;
          }),
      },
    );
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    c.write('a LOGIN alice pw\r\nb LOGIN bob pw\r\n');
    await until(() => fd.requests.length > 0, 5000, 'the first login to reach the handler');
    assert.equal(fd.requests.length, 1);
    finish({ ok: false, reason: 'bad_credentials' });
    assert.match(await c.readLine(), /^a NO \[AUTHENTICATIONFAILED\]/);
    await until(() => fd.requests.length > 1, 5000, 'the second login to reach the handler');
    assert.equal(fd.requests[1]!.login, 'bob');
    finish({ ok: false, reason: 'limited' });
    assert.match(await c.readLine(), /^b NO \[LIMIT\]/);
  });
});
