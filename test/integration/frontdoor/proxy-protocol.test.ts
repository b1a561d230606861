import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import { describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { RawImapClient, proxyV2Header as v2 } from '../../helpers/imap-client.js';
import { type Frontdoor, metricValue, startFrontdoor } from './harness.js';

async function raw(port: number, header: Buffer | string): Promise<RawImapClient> {
  const s = connect(port, '127.0.0.1');
  await once(s, 'connect');
  s.write(header);
  return RawImapClient.wrap(s);
}

async function loginAddress(fd: Frontdoor, c: RawImapClient): Promise<string> {
  assert.match(await c.readLine(), /^\* OK /);
  assert.match((await c.command('a', 'LOGIN alice pw')).at(-1)!, /^a OK /);
  return `${fd.requests.at(-1)!.client.address}:${fd.requests.at(-1)!.client.port}`;
}

const rejections = (fd: Frontdoor, reason: string) =>
  metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { reason });

describe('PROXY protocol from a trusted peer', () => {
  test('v1 and v2 headers set the client address the login handler sees', async (t) => {
    const fd = await startFrontdoor({
      tls: 'none',
      allow_cleartext_login: true,
      proxy_protocol: { trusted: ['127.0.0.0/8'] },
    });
    t.after(() => fd.close());
    const c1 = await raw(fd.port, 'PROXY TCP4 203.0.113.7 127.0.0.1 51234 143\r\n');
    t.after(() => c1.close());
    assert.equal(await loginAddress(fd, c1), '203.0.113.7:51234');
    const c2 = await raw(fd.port, v2({ ip: [198, 51, 100, 9], port: 4444 }));
    t.after(() => c2.close());
    assert.equal(await loginAddress(fd, c2), '198.51.100.9:4444');
  });

  test('header and first command in one packet: the command is not lost (greeting delay off)', async (t) => {
    const fd = await startFrontdoor({
      tls: 'none',
      allow_cleartext_login: true,
      proxy_protocol: { trusted: ['127.0.0.1'] },
    });
    t.after(() => fd.close());
    const c = await raw(fd.port, 'PROXY TCP4 203.0.113.8 127.0.0.1 1 143\r\nn NOOP\r\n');
    t.after(() => c.close());
    assert.match(await c.readLine(), /^\* OK /);
    assert.equal(await c.readLine(), 'n OK NOOP completed');
  });

  test('implicit TLS behind a PROXY header', async (t) => {
    const fd = await startFrontdoor({ tls: 'implicit', proxy_protocol: { trusted: ['127.0.0.1'] } });
    t.after(() => fd.close());
    const s = connect(fd.port, '127.0.0.1');
    await once(s, 'connect');
    s.write('PROXY TCP4 192.0.2.44 127.0.0.1 6000 993\r\n');
    const tls = tlsConnect({ socket: s, rejectUnauthorized: false, servername: 'localhost' });
    await once(tls, 'secureConnect');
    const c = RawImapClient.wrap(tls);
    t.after(() => c.close());
    assert.equal(await loginAddress(fd, c), '192.0.2.44:6000');
  });

  test('a missing or malformed header from a trusted peer closes the connection', async (t) => {
    const fd = await startFrontdoor({ tls: 'none', proxy_protocol: { trusted: ['127.0.0.1'] } });
    t.after(() => fd.close());
    const c = await raw(fd.port, 'a LOGIN alice pw\r\n');
    t.after(() => c.close());
    assert.equal(await c.readToClose(), '');
    assert.equal(await rejections(fd, 'proxy_header_invalid'), 1);
    assert.equal(fd.requests.length, 0);
  });
});

describe('PROXY protocol from an untrusted peer', () => {
  for (const tls of ['none', 'implicit'] as const) {
    test(`a header is refused and the connection closed (tls ${tls})`, async (t) => {
      const fd = await startFrontdoor({
        tls,
        allow_cleartext_login: true,
        proxy_protocol: { trusted: ['10.0.0.0/8'] },
      });
      t.after(() => fd.close());
      const c = await raw(fd.port, 'PROXY TCP4 203.0.113.7 127.0.0.1 51234 143\r\n');
      t.after(() => c.close());
      const got = await c.readToClose();
      assert.doesNotMatch(got, /^a /m);
      assert.equal(fd.requests.length, 0);
      assert.equal(await rejections(fd, 'proxy_header_untrusted'), 1);
    });
  }

  test('a v2 header on a listener without proxy_protocol is refused too', async (t) => {
    const fd = await startFrontdoor({ tls: 'none', allow_cleartext_login: true });
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    await c.readLine();
    c.write(v2({ ip: [1, 2, 3, 4], port: 5 }));
    await c.readToClose();
    assert.equal(await rejections(fd, 'proxy_header_untrusted'), 1);
  });

  test('a plain client from an untrusted address is served normally', async (t) => {
    const fd = await startFrontdoor({
      tls: 'none',
      allow_cleartext_login: true,
      proxy_protocol: { trusted: ['10.0.0.0/8'] },
    });
    t.after(() => fd.close());
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    assert.equal(await loginAddress(fd, c), `127.0.0.1:${(c.socket.address() as { port: number }).port}`);
  });
});
