import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { until } from '../../helpers/deadline.js';
import type { FakeGraph } from '../../helpers/fake-graph.js';
import { type GraphStack, startGraphStack } from '../../helpers/graph-stack.js';
import { connectSmtp, type SmtpClient, type SmtpReply } from '../../helpers/smtp-client.js';
import type { Stack, TestAccount } from '../../helpers/stack.js';

// SMTP in, Microsoft Graph out. The proxy, the OAuth server (oidc-provider, tokens for a second
// resource from the same grant) and the SMTP client side are real; Graph is a fake because no
// real Graph endpoint is reachable here. The fake validates every bearer token by introspection
// at the OP (a mail-server token is refused) and can be told to fail as Graph does.

const TIMEOUT_S = 3;
const LONG_MS = 30_000;

let g: GraphStack;
let graph: FakeGraph;
let s: Stack;
let alice: TestAccount;

before(async () => {
  g = await startGraphStack(['graph_scope: mail.send mail.readwrite', `graph_timeout_seconds: ${TIMEOUT_S}`]);
  ({ graph, stack: s } = g);
  alice = await s.addAccount('alice@example.com');
});
after(async () => {
  await g?.close();
});

/** Over implicit TLS: EHLO, AUTH PLAIN as `who`. */
async function session(who: TestAccount = alice): Promise<{ c: SmtpClient; ehlo: string[] }> {
  const c = await connectSmtp({
    host: '127.0.0.1',
    port: s.ports.submissions,
    tls: 'implicit',
    ca: s.proxyCaFile,
    timeoutMs: LONG_MS,
  });
  const e = await c.ehlo('scanner.example.net');
  assert.equal(e.code, 250, e.text);
  const ir = Buffer.from(`\0${who.login}\0${who.password}`).toString('base64');
  const r = await c.command(`AUTH PLAIN ${ir}`, 15_000);
  assert.equal(`${r.code} ${r.lines[0]?.slice(0, 5)}`, '235 2.7.0', r.text);
  return { c, ehlo: e.lines.slice(1) };
}

function message(
  marker: string,
  headers: { to?: string; cc?: string; bcc?: string } = {},
  body = 'Hello.\r\n',
) {
  return Buffer.from(
    `From: alice@example.com\r\nTo: ${headers.to ?? 'bob@example.net'}\r\n` +
      (headers.cc ? `Cc: ${headers.cc}\r\n` : '') +
      (headers.bcc ? `Bcc: ${headers.bcc}\r\n` : '') +
      `Subject: ${marker}\r\nMessage-ID: <${marker}@example.com>\r\nMIME-Version: 1.0\r\n\r\n${body}`,
    'latin1',
  );
}

/** RFC 5321 §4.5.2 transparency. */
function dotStuff(data: Buffer): Buffer {
  return Buffer.from(data.toString('latin1').replace(/(^|\r\n)\./g, '$1..'), 'latin1');
}

async function sendData(c: SmtpClient, to: string[], msg: Buffer): Promise<SmtpReply> {
  assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
  for (const r of to) assert.equal((await c.command(`RCPT TO:<${r}>`)).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(Buffer.concat([dotStuff(msg), Buffer.from('.\r\n')]));
  return c.reply(LONG_MS);
}

const received = (marker: string) => graph.received.filter((m) => m.mime.includes(`<${marker}@example.com>`));

async function deliveries(result: string): Promise<number> {
  const v = (await s.metrics.graphDeliveries.get()).values.find((x) => x.labels.result === result);
  return v?.value ?? 0;
}

describe('SMTP submission delivered through Microsoft Graph', () => {
  test('EHLO offers only what the proxy implements itself; the message reaches Graph byte for byte', async () => {
    // Every upstream of the listener is learned at start, Graph delivery at once.
    await until(
      async () => {
        const probe = await session();
        probe.c.close();
        return probe.ehlo.some((l) => l.startsWith('CHUNKING'));
      },
      10_000,
      'EHLO to carry Graph delivery extensions',
    );
    const { c, ehlo } = await session();
    assert.deepEqual(ehlo.filter((l) => !l.startsWith('AUTH') && l !== 'HELP').sort(), [
      '8BITMIME',
      'CHUNKING',
      'ENHANCEDSTATUSCODES',
      'PIPELINING',
      'SIZE 36700160',
    ]);
    const before = await deliveries('delivered');
    const msg = message('plain-1');
    const r = await sendData(c, ['bob@example.net'], msg);
    assert.equal(`${r.code} ${r.lines[0]?.slice(0, 5)}`, '250 2.0.0', r.text);
    const got = received('plain-1');
    assert.equal(got.length, 1, 'one message at Graph');
    assert.equal(got[0]!.path, 'sendMail');
    assert.equal(got[0]!.mailbox, 'alice@example.com');
    assert.ok(got[0]!.mime.equals(msg), 'Graph received exactly the MIME the client sent');
    assert.equal(await deliveries('delivered'), before + 1);
    assert.equal((await c.command('QUIT')).code, 221);
    c.close();
  });

  test('two messages and an RSET on one connection; a line starting with a dot survives', async () => {
    const { c } = await session();
    const one = message('two-1', {}, '.leading dot\r\n..two dots\r\n');
    assert.equal((await sendData(c, ['bob@example.net'], one)).code, 250);
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RSET')).code, 250);
    const two = message('two-2');
    assert.equal((await sendData(c, ['bob@example.net'], two)).code, 250);
    assert.ok(received('two-1')[0]?.mime.equals(one), 'first message intact (dot-unstuffed)');
    assert.ok(received('two-2')[0]?.mime.equals(two), 'second message intact');
    c.close();
  });

  test('BDAT chunks (CHUNKING) with binary bytes arrive as sent', async () => {
    const { c } = await session();
    const msg = Buffer.concat([message('bdat-1', {}, ''), randomBytes(70_000), Buffer.from('\r\nend\r\n')]);
    assert.equal((await c.command('MAIL FROM:<alice@example.com> BODY=8BITMIME')).code, 250);
    assert.equal((await c.command('RCPT TO:<bob@example.net>')).code, 250);
    const cuts = [0, 1000, 40_000, msg.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const part = msg.subarray(cuts[i], cuts[i + 1]);
      const last = i + 2 === cuts.length;
      c.send(Buffer.concat([Buffer.from(`BDAT ${part.length}${last ? ' LAST' : ''}\r\n`), part]));
      const r = await c.reply(LONG_MS);
      assert.equal(r.code, 250, r.text);
    }
    assert.ok(received('bdat-1')[0]?.mime.equals(msg), 'the chunks were joined exactly');
    c.close();
  });

  test('envelope recipients not in To/Cc get the message as Bcc, and nobody else does', async () => {
    const { c } = await session();
    const msg = message('bcc-1', { to: 'Bob <bob@example.net>', bcc: 'someone-else@example.org' });
    const r = await sendData(c, ['bob@example.net', 'hidden@example.org'], msg);
    assert.equal(r.code, 250, r.text);
    const got = received('bcc-1')[0];
    assert.ok(got, 'delivered');
    const head = got.mime.toString('latin1').split('\r\n\r\n')[0]!;
    assert.match(head, /^Bcc: .*hidden@example\.org/im, 'the envelope-only recipient is a Bcc');
    assert.doesNotMatch(
      head,
      /someone-else@example\.org/,
      'a Bcc header the envelope does not name is dropped',
    );
    assert.match(head, /^To: Bob <bob@example\.net>$/m, 'To is unchanged');
    c.close();
  });

  test('a To address the envelope does not name is refused: Graph would deliver to it', async () => {
    const { c } = await session();
    const r = await sendData(
      c,
      ['bob@example.net'],
      message('stray-1', { to: 'bob@example.net, carol@example.net' }),
    );
    assert.equal(`${r.code} ${r.lines[0]?.slice(0, 5)}`, '554 5.7.1', r.text);
    assert.match(r.text, /carol@example\.net|not .*envelope/i);
    assert.equal(received('stray-1').length, 0);
    c.close();
  });
});

describe('Graph failures become SMTP replies the device understands', () => {
  const cases: {
    name: string;
    fail: Parameters<FakeGraph['failNext']>[0];
    reply: RegExp;
    result: string;
  }[] = [
    {
      name: '429 with Retry-After',
      fail: { status: 429, code: 'ApplicationThrottled', retryAfter: 7 },
      reply: /^451 4\.3\.0 /,
      result: 'throttled',
    },
    {
      name: '503 with Retry-After',
      fail: { status: 503, retryAfter: 2 },
      reply: /^451 4\.3\.0 /,
      result: 'throttled',
    },
    { name: '504', fail: { status: 504 }, reply: /^451 4\.3\.0 /, result: 'unavailable' },
    { name: '500', fail: { status: 500 }, reply: /^451 4\.3\.0 /, result: 'unavailable' },
    {
      name: '400 bad MIME',
      fail: { status: 400, code: 'ErrorMimeContentInvalid' },
      reply: /^554 5\.6\.0 /,
      result: 'bad_message',
    },
    {
      name: '403 access denied',
      fail: { status: 403, code: 'ErrorAccessDenied' },
      reply: /^550 5\.7\.1 .*Mail\.Send/,
      result: 'access_denied',
    },
    {
      name: '403 send-as denied',
      fail: { status: 403, code: 'ErrorSendAsDenied' },
      reply: /^550 5\.7\.1 .*[Ss]end [Aa]s/,
      result: 'access_denied',
    },
  ];
  for (const k of cases) {
    test(k.name, async () => {
      const { c } = await session();
      const before = await deliveries(k.result);
      graph.failNext({ ...k.fail, call: 'send_mail', times: 1 });
      const marker = `fail-${k.fail.status}-${k.result}`;
      const r = await sendData(c, ['bob@example.net'], message(marker));
      const text = `${r.code} ${r.lines.join(' ')}`;
      assert.match(text, k.reply);
      if (k.fail.retryAfter) assert.match(text, new RegExp(`${k.fail.retryAfter}`), 'the wait is named');
      assert.equal(received(marker).length, 0, 'nothing delivered');
      assert.equal(await deliveries(k.result), before + 1, `counted as ${k.result}`);
      // The session goes on: the next message is delivered.
      assert.equal((await sendData(c, ['bob@example.net'], message(`${marker}-after`))).code, 250);
      c.close();
    });
  }

  test('a Graph that never answers: 451 4.4.1 within the configured timeout', async () => {
    const { c } = await session();
    graph.failNext({ status: 0, hang: true, call: 'send_mail', times: 1 });
    const t0 = Date.now();
    const r = await sendData(c, ['bob@example.net'], message('hang-1'));
    const ms = Date.now() - t0;
    assert.equal(`${r.code} ${r.lines[0]?.slice(0, 5)}`, '451 4.4.1', r.text);
    assert.ok(ms < TIMEOUT_S * 1000 + 2000, `answered after ${ms} ms`);
    c.close();
  });

  test('a token Graph refuses once is replaced by a fresh one and the message goes through', async () => {
    const { c } = await session();
    graph.failNext({ status: 401, code: 'InvalidAuthenticationToken', call: 'send_mail', times: 1 });
    const r = await sendData(c, ['bob@example.net'], message('401-once'));
    assert.equal(r.code, 250, r.text);
    assert.equal(received('401-once').length, 1);
    c.close();
  });

  test('requests to Graph are counted by call and status', async () => {
    const v = (await s.metrics.graphRequests.get()).values;
    const n = (call: string, status: string) =>
      v.find((x) => x.labels.call === call && x.labels.status === status)?.value ?? 0;
    assert.ok(n('send_mail', '202') >= 5, 'accepted sendMail calls');
    assert.ok(n('send_mail', '429') >= 1);
    assert.ok(n('send_mail', '403') >= 2);
  });
});

describe('nothing is answered 250 unless Graph accepted it', () => {
  test('a client gone mid-DATA: nothing is sent to Graph, the session slot is freed', async () => {
    const before = graph.count('send_mail');
    const { c } = await session();
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<bob@example.net>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.send(message('cut-1', {}, 'half a message\r\n'));
    c.close();
    await until(
      async () =>
        ((await s.metrics.activeSessions.get()).values.find((x) => x.labels.protocol === 'smtp')?.value ??
          0) === 0,
      10_000,
      'the SMTP session to end',
    );
    assert.equal(graph.count('send_mail'), before, 'no Graph request for a message never finished');
    assert.equal(received('cut-1').length, 0);
  });

  test('the Graph token is for Graph: the fake refuses a mail-server token, so the proxy never used one', async () => {
    assert.ok(alice.accessToken);
    const res = await fetch(`${graph.url}/v1.0/users/alice@example.com/sendMail`, {
      method: 'POST',
      headers: { authorization: `Bearer ${alice.accessToken}`, 'content-type': 'text/plain' },
      body: message('wrong-aud').toString('base64'),
    });
    assert.equal(res.status, 401);
    assert.ok(graph.received.length > 0, 'the proxy did deliver with its own tokens');
  });
});
