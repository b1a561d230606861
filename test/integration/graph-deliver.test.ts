import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { after, before, beforeEach, test } from 'node:test';
import { ProxyError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { createMetrics, type Metrics } from '../../src/metrics.js';
import { GraphClient, UPLOAD_CHUNK_BYTES } from '../../src/protocols/smtp/graph/client.js';
import {
  GraphDeliverer,
  type GraphTarget,
  type GraphTokenSource,
} from '../../src/protocols/smtp/graph/deliver.js';
import type { Envelope, TransactionReply } from '../../src/protocols/smtp/transaction.js';
import { withDeadline } from '../helpers/deadline.js';
import { type FakeGraph, type GraphFailure, mimeRecipients, startFakeGraph } from '../helpers/fake-graph.js';
import { startOP, type TestOP } from '../helpers/op.js';

/**
 * The Graph deliverer against the fake Microsoft Graph (no real Graph endpoint is reachable
 * here) with real tokens: a real grant at the test oidc-provider, refreshed for the Graph
 * resource (RFC 8707), checked by the fake through introspection.
 */

const GRAPH = 'https://graph.test';
const ALICE = 'alice@example.com';
let op: TestOP;
let graph: FakeGraph;
let aliceRefresh: string;
let logged = '';
const logStream = new PassThrough().on('data', (c: Buffer) => {
  logged += c.toString();
});
const log = createLogger({ destination: logStream, level: 'debug', format: 'json' });
/** Every access token handed out, to prove none reaches a log. */
const issued: string[] = [];

before(async () => {
  op = await startOP({ resources: { [GRAPH]: { scope: 'mail.send mail.readwrite' } } });
  graph = await startFakeGraph({
    introspect: { url: op.introspection.url, clientId: op.introspection.id, secret: op.introspection.secret },
    audience: GRAPH,
    requiredScopes: { send: 'mail.send', readWrite: 'mail.readwrite' },
  });
  aliceRefresh = (await withDeadline(op.mintGrant(ALICE), 15_000, 'a grant from the OP')).refresh_token;
});
after(async () => {
  await graph?.stop();
  await op?.close();
  assert.match(logged, /Graph delivery failed/, 'the log was captured');
  assert.ok(issued.length > 5);
  for (const t of issued) assert.ok(!logged.includes(t), 'an access token reached the log');
});
beforeEach(() => graph.clearFailures());

/** Graph tokens from the grant, fresh ones on `force`; records each call's `force`. */
function tokensFrom(
  opts: { scope?: string; resource?: string | null } = {},
): GraphTokenSource & { calls: boolean[] } {
  let current: string | undefined;
  const calls: boolean[] = [];
  const fn = async (force: boolean) => {
    calls.push(force);
    if (current === undefined || force) {
      const r = await op.refresh(aliceRefresh, {
        ...(opts.resource === null
          ? {}
          : { resource: opts.resource ?? GRAPH, scope: opts.scope ?? 'mail.send mail.readwrite' }),
      });
      if (r.refresh_token) aliceRefresh = r.refresh_token;
      current = r.access_token;
      issued.push(current);
    }
    return current;
  };
  return Object.assign(fn, { calls });
}

interface Run {
  reply: TransactionReply;
  metrics: Metrics;
  result(r: string): Promise<number>;
  requests(call: string, status: string): Promise<number>;
}

async function deliver(
  message: Buffer,
  recipients: string[],
  o: {
    save?: boolean;
    timeoutMs?: number;
    tokens?: GraphTokenSource;
    signal?: AbortSignal;
    chunks?: number;
  } = {},
): Promise<Run> {
  const metrics = createMetrics({ defaults: false });
  const target: GraphTarget = {
    provider: 'microsoft',
    baseUrl: `${graph.url}/`,
    mailbox: ALICE,
    saveToSentItems: o.save ?? true,
    timeoutMs: o.timeoutMs ?? 10_000,
  };
  const envelope: Envelope = { from: ALICE, recipients, body: '8BITMIME' };
  // The session hands the message over as the slices it read.
  const n = o.chunks ?? 3;
  const step = Math.ceil(message.length / n) || 1;
  const slices = Array.from({ length: n }, (_, i) => message.subarray(i * step, (i + 1) * step));
  const reply = await withDeadline(
    new GraphDeliverer({ metrics, log }).deliver(
      target,
      o.tokens ?? tokensFrom(),
      envelope,
      slices,
      message.length,
      o.signal ?? new AbortController().signal,
    ),
    60_000,
    'the Graph delivery reply',
  );
  const value = async (
    m: Metrics['graphDeliveries'] | Metrics['graphRequests'],
    labels: Record<string, string>,
  ) =>
    (await m.get()).values
      .filter((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x))
      .reduce((s, v) => s + v.value, 0);
  return {
    reply,
    metrics,
    result: (r) => value(metrics.graphDeliveries, { provider: 'microsoft', result: r }),
    requests: (call, status) => value(metrics.graphRequests, { provider: 'microsoft', call, status }),
  };
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const text = (n: number) =>
  Buffer.from(
    `${'The quick brown fox jumps over the lazy dog. 0123456789'.repeat(20)}\r\n`.repeat(Math.ceil(n / 1102)),
  ).subarray(0, n);

function simple(headers: string, body: Buffer | string = 'Hello.\r\n'): Buffer {
  return Buffer.concat([
    Buffer.from(`From: ${ALICE}\r\n${headers}Subject: test\r\nMIME-Version: 1.0\r\n\r\n`),
    Buffer.from(body),
  ]);
}

/** A scan: text part and a PDF, base64 in 76-column lines. */
function withPdf(pdf: Buffer, headers = 'To: bob@example.com\r\n'): Buffer {
  return Buffer.from(
    `From: ${ALICE}\r\n${headers}Subject: Scan\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="==b=="\r\n\r\n` +
      `--==b==\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nScanned document attached.\r\n` +
      `--==b==\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename="logo.png"\r\nContent-ID: <logo1>\r\nContent-Transfer-Encoding: base64\r\n\r\n${Buffer.from('tiny png').toString('base64')}\r\n` +
      `--==b==\r\nContent-Type: application/pdf; name="scan.pdf"\r\nContent-Disposition: attachment; filename="scan.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n` +
      `${pdf.toString('base64').replace(/.{76}/g, '$&\r\n')}\r\n--==b==--\r\n`,
  );
}

const ACCEPTED = { code: 250, enhanced: '2.0.0', text: 'Accepted by Microsoft Graph' };

test('a 1 MiB message goes out by sendMail exactly as sent, counted delivered', async () => {
  const before = graph.received.length;
  const msg = simple('To: "Doe, Bob" <bob@example.com>\r\n', text(1024 * 1024));
  const run = await deliver(msg, ['bob@example.com']);
  assert.deepEqual(run.reply, ACCEPTED);
  const got = graph.received[before]!;
  assert.equal(got.path, 'sendMail');
  assert.equal(sha(got.mime), sha(msg), 'the MIME Graph received is the message');
  assert.equal(await run.result('delivered'), 1);
  assert.equal(await run.requests('send_mail', '202'), 1);
  assert.equal((await run.metrics.graphDeliveryBytes.get()).values[0]?.value, msg.length);
  assert.equal(
    (await run.metrics.graphDeliverySeconds.get()).values.find(
      (v) => (v.labels as Record<string, unknown>).le === '+Inf',
    )?.value,
    1,
  );
});

test('a 10 MB scan goes through a draft: PDF by upload session in 320 KiB multiples, byte-identical', async () => {
  const before = graph.received.length;
  const reqs = graph.requests.length;
  const pdf = randomBytes(7_600_000);
  const msg = withPdf(pdf);
  assert.ok(msg.length > 10_000_000);
  const run = await deliver(msg, ['bob@example.com']);
  assert.deepEqual(run.reply, ACCEPTED);
  const got = graph.received[before]!;
  assert.equal(got.path, 'draft');
  assert.equal(got.deleteAfterSubmit, false);
  assert.deepEqual(
    got.attachments.map((a) => [a.name, a.contentType, a.isInline, a.contentId ?? null]),
    [
      ['logo.png', 'image/png', true, 'logo1'],
      ['scan.pdf', 'application/pdf', false, null],
    ],
  );
  assert.equal(got.attachments[0]!.bytes.toString(), 'tiny png');
  assert.equal(sha(got.attachments[1]!.bytes), sha(pdf), 'PDF byte-identical after decoding');
  assert.ok(got.mime.length < 1000, `draft MIME without attachments (${got.mime.length} bytes)`);
  assert.match(got.mime.toString(), /Scanned document attached\.\r\n--==b==--\r\n$/);
  const ranges = graph.requests.slice(reqs).flatMap((r) => (r.contentRange ? [r.contentRange] : []));
  assert.equal(ranges.length, Math.ceil(pdf.length / UPLOAD_CHUNK_BYTES));
  assert.equal(ranges[0], `bytes 0-${UPLOAD_CHUNK_BYTES - 1}/${pdf.length}`);
  assert.equal(UPLOAD_CHUNK_BYTES % 327_680, 0);
  assert.deepEqual(
    graph.requests
      .slice(reqs)
      .map((r) => r.call)
      .filter((c) => c !== 'upload'),
    ['create_draft', 'attach', 'create_upload_session', 'send_draft'],
  );
  assert.equal(await run.requests('upload', '201'), 1);
  assert.equal(graph.drafts(), 0);
});

test('an upload chunk that fails with 503 is sent again once, and the scan still arrives intact', async () => {
  const before = graph.received.length;
  const reqs = graph.requests.length;
  const pdf = randomBytes(4_000_000);
  graph.failNext({ status: 503, call: 'upload' });
  const run = await deliver(withPdf(pdf), ['bob@example.com'], { chunks: 1 });
  assert.deepEqual(run.reply, ACCEPTED);
  assert.equal(sha(graph.received[before]!.attachments[1]!.bytes), sha(pdf));
  const ranges = graph.requests.slice(reqs).flatMap((r) => (r.contentRange ? [r.contentRange] : []));
  assert.deepEqual(ranges, [
    `bytes 0-${UPLOAD_CHUNK_BYTES - 1}/${pdf.length}`,
    `bytes 0-${UPLOAD_CHUNK_BYTES - 1}/${pdf.length}`,
    `bytes ${UPLOAD_CHUNK_BYTES}-${pdf.length - 1}/${pdf.length}`,
  ]);
  assert.equal(await run.requests('upload', '503'), 1);
});

test('Bcc-only recipients: every envelope recipient reaches Graph as Bcc, the old Bcc header is gone', async () => {
  const before = graph.received.length;
  const msg = simple('Bcc: stranger@example.com\r\n');
  const run = await deliver(msg, ['x@example.com', 'Y@Example.com']);
  assert.deepEqual(run.reply, ACCEPTED);
  const rc = mimeRecipients(graph.received[before]!.mime);
  assert.deepEqual(rc, { to: [], cc: [], bcc: ['x@example.com', 'Y@Example.com'] });
  const withTo = await deliver(simple('To: x@example.com\r\n'), ['X@example.com', 'z@example.com']);
  assert.deepEqual(withTo.reply, ACCEPTED);
  assert.deepEqual(mimeRecipients(graph.received[before + 1]!.mime), {
    to: ['x@example.com'],
    cc: [],
    bcc: ['z@example.com'],
  });
});

test('a To address that is not an envelope recipient is refused before any Graph call', async () => {
  const reqs = graph.requests.length;
  const run = await deliver(simple('To: bob@example.com, mallory@example.net\r\n'), ['bob@example.com']);
  assert.equal(run.reply.code, 554);
  assert.equal(run.reply.enhanced, '5.7.1');
  assert.match(run.reply.text, /mallory@example\.net is not a recipient/);
  assert.equal(graph.requests.length, reqs);
  assert.equal(await run.result('recipient_mismatch'), 1);
});

test('saveToSentItems false: a draft marked PR_DELETE_AFTER_SUBMIT by PATCH, then sent', async () => {
  const before = graph.received.length;
  const reqs = graph.requests.length;
  const msg = simple('To: bob@example.com\r\n');
  const run = await deliver(msg, ['bob@example.com'], { save: false });
  assert.deepEqual(run.reply, ACCEPTED);
  const got = graph.received[before]!;
  assert.equal(got.path, 'draft');
  assert.equal(got.deleteAfterSubmit, true);
  assert.deepEqual(got.extendedProperties, [{ id: 'Boolean 0x0E01', value: 'true' }]);
  assert.equal(sha(got.mime), sha(msg));
  assert.deepEqual(
    graph.requests.slice(reqs).map((r) => r.call),
    ['create_draft', 'patch', 'send_draft'],
  );
});

/** Each Graph answer and the SMTP reply it becomes (the contract's reply table). */
const TABLE: {
  name: string;
  fail: GraphFailure;
  code: number;
  enhanced: string;
  text: RegExp;
  result: string;
  status: string;
}[] = [
  {
    name: '429 Retry-After',
    fail: { status: 429, retryAfter: 7 },
    code: 451,
    enhanced: '4.3.0',
    text: /throttling \(HTTP 429\); retry after 7 s/,
    result: 'throttled',
    status: '429',
  },
  {
    name: '503 Retry-After',
    fail: { status: 503, retryAfter: 30 },
    code: 451,
    enhanced: '4.3.0',
    text: /retry after 30 s/,
    result: 'throttled',
    status: '503',
  },
  {
    name: '504 Retry-After',
    fail: { status: 504, retryAfter: 2 },
    code: 451,
    enhanced: '4.3.0',
    text: /retry after 2 s/,
    result: 'throttled',
    status: '504',
  },
  {
    name: '503',
    fail: { status: 503 },
    code: 451,
    enhanced: '4.3.0',
    text: /unavailable \(ServiceNotAvailable/,
    result: 'unavailable',
    status: '503',
  },
  {
    name: '500',
    fail: { status: 500 },
    code: 451,
    enhanced: '4.3.0',
    text: /unavailable \(InternalServerError/,
    result: 'unavailable',
    status: '500',
  },
  {
    name: '400',
    fail: { status: 400, code: 'ErrorMimeContentInvalid', message: 'bad\r\nMIME' },
    code: 554,
    enhanced: '5.6.0',
    text: /\(ErrorMimeContentInvalid: bad MIME\)$/,
    result: 'bad_message',
    status: '400',
  },
  {
    name: '403 ErrorAccessDenied',
    fail: { status: 403, code: 'ErrorAccessDenied' },
    code: 550,
    enhanced: '5.7.1',
    text: /grant the app Mail\.Send$/,
    result: 'access_denied',
    status: '403',
  },
  {
    name: '403 ErrorSendAsDenied',
    fail: { status: 403, code: 'ErrorSendAsDenied' },
    code: 550,
    enhanced: '5.7.1',
    text: /Send As/,
    result: 'access_denied',
    status: '403',
  },
  {
    name: '401 twice',
    fail: { status: 401, times: 2 },
    code: 451,
    enhanced: '4.7.0',
    text: /refused the access token/,
    result: 'token_unavailable',
    status: '401',
  },
];

for (const row of TABLE) {
  test(`Graph ${row.name} → ${row.code} ${row.enhanced} (${row.result})`, async () => {
    const before = graph.received.length;
    graph.failNext({ ...row.fail, call: 'send_mail' });
    const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com']);
    assert.equal(run.reply.code, row.code, run.reply.text);
    assert.equal(run.reply.enhanced, row.enhanced);
    assert.match(run.reply.text, row.text);
    assert.doesNotMatch(run.reply.text, /[\r\n]/);
    assert.equal(await run.result(row.result), 1);
    assert.ok((await run.requests('send_mail', row.status)) >= 1);
    assert.equal(graph.received.length, before, 'nothing sent');
  });
}

test('Graph 413 on sendMail: the message goes again through a draft with its attachments apart', async () => {
  const before = graph.received.length;
  const pdf = randomBytes(200_000);
  graph.failNext({ status: 413, call: 'send_mail' });
  const run = await deliver(withPdf(pdf), ['bob@example.com']);
  assert.deepEqual(run.reply, ACCEPTED);
  assert.equal(graph.received[before]!.path, 'draft');
  assert.equal(sha(graph.received[before]!.attachments[1]!.bytes), sha(pdf));
  assert.equal(await run.requests('send_mail', '413'), 1);
});

test('Graph 413 on the draft itself → 552 5.3.4 too_large; a message too large without attachments never leaves', async () => {
  graph.failNext({ status: 413, call: 'create_draft' });
  const run = await deliver(withPdf(randomBytes(4_000_000)), ['bob@example.com']);
  assert.deepEqual([run.reply.code, run.reply.enhanced, await run.result('too_large')], [552, '5.3.4', 1]);
  const reqs = graph.requests.length;
  const huge = await deliver(simple('To: bob@example.com\r\n', text(5_000_000)), ['bob@example.com']);
  assert.deepEqual([huge.reply.code, huge.reply.enhanced], [552, '5.3.4']);
  assert.match(huge.reply.text, /5\.0 MB without its attachments \(not a multipart message\)/);
  assert.equal(graph.requests.length, reqs);
});

test('no answer within the timeout → 451 4.4.1, counted as a timeout request and delivery', async () => {
  graph.failNext({ hang: true, status: 0, call: 'send_mail' });
  const t0 = Date.now();
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], { timeoutMs: 400 });
  assert.deepEqual([run.reply.code, run.reply.enhanced], [451, '4.4.1']);
  assert.ok(Date.now() - t0 < 5000, `answered after ${Date.now() - t0} ms`);
  assert.equal(await run.result('timeout'), 1);
  assert.equal(await run.requests('send_mail', 'timeout'), 1);
});

test('401 once: one fresh token and the message is delivered', async () => {
  const tokens = tokensFrom();
  graph.failNext({ status: 401, call: 'send_mail' });
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], { tokens });
  assert.deepEqual(run.reply, ACCEPTED);
  assert.deepEqual(tokens.calls, [false, true]);
  assert.equal(await run.requests('send_mail', '401'), 1);
  assert.equal(await run.requests('send_mail', '202'), 1);
});

test('a token for the wrong audience is refused by Graph twice → 451 4.7.0 token_unavailable', async () => {
  const tokens = tokensFrom({ resource: null });
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], { tokens });
  assert.deepEqual(
    [run.reply.code, run.reply.enhanced, await run.result('token_unavailable')],
    [451, '4.7.0', 1],
  );
  assert.deepEqual(tokens.calls, [false, true]);
});

test('a token without Mail.ReadWrite on the draft path → 550 5.7.1 naming both permissions', async () => {
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], {
    save: false,
    tokens: tokensFrom({ scope: 'mail.send' }),
  });
  assert.deepEqual([run.reply.code, run.reply.enhanced], [550, '5.7.1']);
  assert.match(run.reply.text, /ErrorAccessDenied.*Mail\.Send and Mail\.ReadWrite/);
});

test('token source failures: needs_consent → 550 5.7.8 with its words; anything else → 451 4.7.0', async () => {
  const consent = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], {
    tokens: async () => {
      throw new ProxyError('needs_consent', 'grant revoked', {
        clientText: 'Reconnect at https://proxy.example/connect',
      });
    },
  });
  assert.deepEqual(consent.reply, {
    code: 550,
    enhanced: '5.7.8',
    text: 'Reconnect at https://proxy.example/connect',
  });
  assert.equal(await consent.result('needs_consent'), 1);
  const down = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], {
    tokens: async () => {
      throw new ProxyError('token_unavailable', 'token endpoint down');
    },
  });
  assert.deepEqual(
    [down.reply.code, down.reply.enhanced, await down.result('token_unavailable')],
    [451, '4.7.0', 1],
  );
});

test('a failure after the draft exists: the draft is deleted (best effort), nothing is sent', async () => {
  const before = graph.received.length;
  const reqs = graph.requests.length;
  const drafts = graph.drafts();
  graph.failNext({ status: 500, call: 'send_draft' });
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], { save: false });
  assert.deepEqual([run.reply.code, run.reply.enhanced], [451, '4.3.0']);
  assert.equal(graph.received.length, before);
  const deletes = graph.requests.slice(reqs).filter((r) => r.method === 'DELETE');
  assert.equal(deletes.length, 1, 'one DELETE of the draft');
  assert.match(deletes[0]!.path, /^\/v1\.0\/users\/alice@example\.com\/messages\/[A-Za-z0-9_-]+$/);
  assert.equal(deletes[0]!.status, 204);
  assert.equal(graph.drafts(), drafts, 'no draft left behind');
  assert.equal(await run.requests('send_draft', '500'), 1);
  assert.equal(await run.requests('delete_draft', '204'), 1);
});

test('the SMTP client going away aborts the delivery at once', async () => {
  graph.failNext({ hang: true, status: 0, call: 'send_mail' });
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 200);
  const t0 = Date.now();
  const run = await deliver(simple('To: bob@example.com\r\n'), ['bob@example.com'], { signal: ac.signal });
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(run.reply.code, 451);
  assert.equal(await run.result('aborted'), 1);
});

/** A scripted HTTP server for what the fake Graph does not do (dates, redirects, odd upload answers). */
async function scripted(
  handler: (req: IncomingMessage, body: Buffer, res: ServerResponse) => void,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => handler(req, Buffer.concat(chunks), res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

test('Retry-After as an HTTP date; a redirect is never followed with the token', async () => {
  const elsewhere: string[] = [];
  const trap = await scripted((req, _b, res) => {
    elsewhere.push(req.headers.authorization ?? '');
    res.writeHead(202).end();
  });
  let answer: (res: ServerResponse) => void = () => undefined;
  const server = await scripted((_req, _b, res) => answer(res));
  const target = (baseUrl: string): GraphTarget => ({
    provider: 'microsoft',
    baseUrl,
    mailbox: ALICE,
    saveToSentItems: true,
    timeoutMs: 1000,
  });
  const send = () =>
    withDeadline(
      new GraphDeliverer({ log }).deliver(
        target(server.url),
        async () => 'not-a-real-token',
        { from: ALICE, recipients: ['bob@example.com'], body: '7BIT' },
        [simple('To: bob@example.com\r\n')],
        100,
        new AbortController().signal,
      ),
      10_000,
      'a reply',
    );
  try {
    answer = (res) =>
      res
        .writeHead(429, { 'retry-after': new Date(Date.now() + 120_000).toUTCString() })
        .end('{"error":{"code":"TooManyRequests","message":"slow down"}}');
    const throttled = await send();
    assert.equal(throttled.code, 451);
    assert.match(throttled.text, /retry after (119|120) s$/);
    answer = (res) => res.writeHead(307, { location: `${trap.url}/v1.0/users/x/sendMail` }).end();
    const redirected = await send();
    assert.deepEqual([redirected.code, redirected.enhanced], [451, '4.3.0']);
    assert.deepEqual(elsewhere, []);
    answer = (res) => res.writeHead(502, { 'content-type': 'text/html' }).end('<html>Bad gateway</html>');
    const html = await send();
    assert.equal(html.text, 'Microsoft Graph unavailable (HTTP 502); try again later');
    // 202 sent, then the body never comes: the message was accepted, so the client hears 250.
    answer = (res) => {
      res.writeHead(202, { 'content-length': '10' });
      res.flushHeaders();
    };
    assert.deepEqual(await send(), ACCEPTED);
  } finally {
    await server.close();
    await trap.close();
  }
});

test('upload: nextExpectedRanges decides the next chunk; a session that never moves on fails', async () => {
  const ranges: string[] = [];
  /** status 0: the connection is cut without an answer. */
  let script: (range: string) => { status: number; json?: unknown } = () => ({ status: 500 });
  const server = await scripted((req, body, res) => {
    const range = String(req.headers['content-range']);
    ranges.push(`${range} ${body.length}${req.headers.authorization === undefined ? '' : ' AUTH'}`);
    const a = script(range);
    if (a.status === 0) {
      req.socket.destroy();
      return;
    }
    res
      .writeHead(a.status, { 'content-type': 'application/json' })
      .end(a.json === undefined ? '' : JSON.stringify(a.json));
  });
  const data = randomBytes(UPLOAD_CHUNK_BYTES * 2 + 10);
  const source = { size: data.length, read: (o: number, n: number) => data.subarray(o, o + n) };
  const client = new GraphClient({
    provider: 'p',
    timeoutMs: 5000,
    fetch,
    signal: new AbortController().signal,
  });
  const C = UPLOAD_CHUNK_BYTES;
  try {
    // The first chunk is answered "send from 327,680 again": the server kept only part of it.
    let n = 0;
    script = () => {
      n++;
      if (n === 1) return { status: 200, json: { nextExpectedRanges: ['327680-'] } };
      if (n === 2) return { status: 200, json: { nextExpectedRanges: [`${327_680 + C}-`] } };
      return { status: 201 };
    };
    await withDeadline(client.upload(`${server.url}/up?x=1`, source), 10_000, 'the upload');
    assert.deepEqual(ranges, [
      `bytes 0-${C - 1}/${data.length} ${C}`,
      `bytes 327680-${327_680 + C - 1}/${data.length} ${C}`,
      `bytes ${327_680 + C}-${data.length - 1}/${data.length} ${data.length - 327_680 - C}`,
    ]);
    ranges.length = 0;
    // A cut connection: the chunk is sent once more; a second failure ends the upload.
    n = 0;
    script = () => (++n === 1 ? { status: 0 } : { status: 201 });
    await withDeadline(client.upload(`${server.url}/up`, source), 10_000, 'the upload');
    assert.deepEqual(
      ranges.map((r) => r.split(' ')[1]),
      [`0-${C - 1}/${data.length}`, `0-${C - 1}/${data.length}`],
    );
    ranges.length = 0;
    script = () => ({ status: 0 });
    await assert.rejects(
      withDeadline(client.upload(`${server.url}/up`, source), 10_000, 'the upload'),
      /network/,
    );
    assert.equal(ranges.length, 2);
    ranges.length = 0;
    script = () => ({ status: 200, json: { nextExpectedRanges: ['0-'] } });
    await assert.rejects(
      withDeadline(client.upload(`${server.url}/up`, source), 10_000, 'the upload'),
      /stuck at byte 0/,
    );
    assert.equal(ranges.length, 3, 'the same range three times, then it gives up');
  } finally {
    await server.close();
  }
});
