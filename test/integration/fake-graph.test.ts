import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { withDeadline } from '../helpers/deadline.js';
import {
  type FakeGraph,
  GRAPH_MAX_REQUEST_BYTES,
  mimeRecipients,
  startFakeGraph,
  UPLOAD_CHUNK_UNIT,
} from '../helpers/fake-graph.js';
import { startOP, type TestOP } from '../helpers/op.js';

/**
 * The fake Microsoft Graph (no real Graph endpoint is reachable here) against the real test
 * oidc-provider: Graph tokens come from a real grant through an RFC 8707 refresh, and the fake
 * checks them by introspection. Proves what delivery tests rely on: tokens, stored MIME,
 * reassembled attachments, and failures answered as told.
 */

const GRAPH = 'https://graph.test';
const ALICE = 'alice@example.com';
let op: TestOP;
let graph: FakeGraph;
let alice: { imap: string; graph: string; refresh: string };

before(async () => {
  op = await startOP({
    resources: { [GRAPH]: { scope: 'mail.send mail.readwrite', appRoles: 'mail.send' } },
    clientCredentials: true,
    clientCredentialsSubject: 'graph-app',
  });
  graph = await startFakeGraph({
    introspect: { url: op.introspection.url, clientId: op.introspection.id, secret: op.introspection.secret },
    audience: GRAPH,
    requiredScopes: { send: 'mail.send', readWrite: 'mail.readwrite' },
  });
  const g = await withDeadline(op.mintGrant(ALICE), 10_000, 'a grant from the OP');
  const r = await withDeadline(
    op.refresh(g.refresh_token, { resource: GRAPH, scope: 'mail.send mail.readwrite' }),
    5000,
    'a Graph token',
  );
  assert.ok(r.refresh_token);
  alice = { imap: g.access_token, graph: r.access_token, refresh: r.refresh_token };
});
after(async () => {
  await graph?.stop();
  await op?.close();
});

interface Answer {
  status: number;
  headers: Headers;
  json: Record<string, unknown> | undefined;
}

async function call(
  method: string,
  path: string,
  o: {
    token?: string;
    body?: Buffer | string;
    type?: string;
    headers?: Record<string, string>;
    ms?: number;
  } = {},
): Promise<Answer> {
  const res = await withDeadline(
    fetch(path.startsWith('http') ? path : `${graph.url}${path}`, {
      method,
      headers: {
        ...(o.token ? { authorization: `Bearer ${o.token}` } : {}),
        ...(o.type ? { 'content-type': o.type } : {}),
        ...o.headers,
      },
      ...(o.body === undefined ? {} : { body: o.body }),
    }),
    o.ms ?? 10_000,
    `${method} ${path.split('?')[0]}`,
  );
  const text = await res.text();
  return {
    status: res.status,
    headers: res.headers,
    json: text ? (JSON.parse(text) as Record<string, unknown>) : undefined,
  };
}

const errorCode = (a: Answer) => (a.json?.error as { code?: string } | undefined)?.code;
const mimeOf = (to: string, extra = '') =>
  Buffer.from(
    `From: ${ALICE}\r\nTo: "Doe, Bob" <bob@example.com>\r\nCc: carol@example.com,\r\n dave@example.com\r\nBcc: eve@example.com\r\nSubject: t\r\n${extra}\r\nHello ${to} \xe9\r\n`,
    'latin1',
  );
const sendMail = (token: string, mime: Buffer, mailbox = ALICE) =>
  call('POST', `/v1.0/users/${encodeURIComponent(mailbox)}/sendMail`, {
    token,
    type: 'text/plain',
    body: mime.toString('base64'),
  });

test('the OP issues a Graph-audience token from the grant; a refresh without resource stays as before', async () => {
  const info = await op.introspect(alice.graph);
  assert.equal(info.aud, GRAPH);
  assert.equal(info.sub, ALICE);
  assert.equal(info.scope, 'mail.send mail.readwrite');
  // Without openid oidc-provider would fall back to a grant's only resource; this grant has none to pick.
  const g = await op.mintGrant('frank@example.com', { scope: 'offline_access mail' });
  const plain = await op.refresh(g.refresh_token);
  const pi = await op.introspect(plain.access_token);
  assert.equal(pi.active, true);
  assert.equal(pi.aud, undefined);
  assert.equal(pi.scope, 'offline_access mail');
  await assert.rejects(
    op.refresh(plain.refresh_token ?? '', { resource: 'https://other.test' }),
    /invalid_target/,
  );
});

test('sendMail with a Graph token stores the exact MIME; recipients parse from its headers', async () => {
  const mime = mimeOf('sendMail');
  const before = graph.received.length;
  const a = await sendMail(alice.graph, mime);
  assert.equal(a.status, 202);
  const got = graph.received[before];
  assert.ok(got);
  assert.equal(got.path, 'sendMail');
  assert.equal(got.mailbox, ALICE);
  assert.ok(got.mime.equals(mime), 'MIME byte-identical');
  assert.equal(graph.requests.at(-1)?.bytes, mime.toString('base64').length);
  assert.deepEqual(mimeRecipients(got.mime), {
    to: ['bob@example.com'],
    cc: ['carol@example.com', 'dave@example.com'],
    bcc: ['eve@example.com'],
  });
  const n = graph.introspections();
  assert.equal((await sendMail(alice.graph, mime)).status, 202);
  assert.equal(graph.introspections(), n, 'the token was introspected once and cached');
});

test('tokens Graph would refuse get 401/403 and nothing is stored', async () => {
  const before = graph.received.length;
  const imap = await sendMail(alice.imap, mimeOf('imap'));
  assert.equal(imap.status, 401, 'the grant’s IMAP token (no Graph audience)');
  assert.equal(errorCode(imap), 'InvalidAuthenticationToken');
  assert.match(imap.headers.get('www-authenticate') ?? '', /^Bearer/);
  assert.equal((await sendMail('not-a-token', mimeOf('x'))).status, 401);
  const none = await call('POST', `/v1.0/users/${ALICE}/sendMail`, { type: 'text/plain', body: 'QQ==' });
  assert.equal(none.status, 401);
  const other = await sendMail(alice.graph, mimeOf('other'), 'bob@example.com');
  assert.equal(other.status, 403);
  assert.equal(errorCode(other), 'ErrorAccessDenied');
  // A revoked grant's fresh token is inactive at introspection.
  const g = await op.mintGrant('gina@example.com');
  const t = await op.refresh(g.refresh_token, { resource: GRAPH });
  await op.revoke(t.refresh_token ?? '');
  assert.equal((await sendMail(t.access_token, mimeOf('revoked'), 'gina@example.com')).status, 401);
  assert.equal(graph.received.length, before);
});

test('an app-only token may send as any mailbox', async () => {
  const cc = await op.clientCredentialsToken({ resource: GRAPH, scope: '.default' });
  const info = await op.introspect(cc.access_token);
  assert.equal(info.idtyp, 'app');
  assert.deepEqual(info.roles, ['mail.send']);
  const a = await sendMail(cc.access_token, mimeOf('app'), 'shared@example.com');
  assert.equal(a.status, 202);
  assert.equal(graph.received.at(-1)?.mailbox, 'shared@example.com');
  // Its roles lack mail.readwrite: the draft path is refused, as Graph refuses it without Mail.ReadWrite.
  const d = await call('POST', '/v1.0/users/shared@example.com/messages', {
    token: cc.access_token,
    type: 'text/plain',
    body: mimeOf('d').toString('base64'),
  });
  assert.equal(d.status, 403);
  assert.equal(errorCode(d), 'ErrorAccessDenied');
});

test('bad bodies: invalid base64 → 400, JSON sendMail → 400, 4 MB limit exactly', async () => {
  const bad = await call('POST', `/v1.0/users/${ALICE}/sendMail`, {
    token: alice.graph,
    type: 'text/plain',
    body: 'not base64!',
  });
  assert.equal(bad.status, 400);
  assert.equal(errorCode(bad), 'ErrorMimeContentInvalidBase64String');
  const json = await call('POST', `/v1.0/users/${ALICE}/sendMail`, {
    token: alice.graph,
    type: 'application/json',
    body: '{"message":{}}',
  });
  assert.equal(json.status, 400);
  const noRcpt = await sendMail(
    alice.graph,
    Buffer.from('From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n'),
  );
  assert.equal(errorCode(noRcpt), 'ErrorInvalidRecipients');
  // Base64 of `n` bytes is 4n/3 long: a MIME of 3,145,728 bytes makes exactly 4,194,304.
  const head = mimeOf('big');
  const atLimit = Buffer.concat([head, Buffer.alloc((GRAPH_MAX_REQUEST_BYTES / 4) * 3 - head.length, 'a')]);
  assert.equal(atLimit.toString('base64').length, GRAPH_MAX_REQUEST_BYTES);
  assert.equal((await sendMail(alice.graph, atLimit)).status, 202);
  assert.ok(graph.received.at(-1)?.mime.equals(atLimit));
  const over = await call('POST', `/v1.0/users/${ALICE}/sendMail`, {
    token: alice.graph,
    type: 'text/plain',
    body: `${atLimit.toString('base64')}\r\n`,
  });
  assert.equal(over.status, 413);
  assert.equal(errorCode(over), 'RequestBodyTooLarge');
});

test('draft + attachment + upload session + send reassembles attachments byte-identically', async () => {
  const base = `/v1.0/users/${ALICE}/messages`;
  const mime = mimeOf('draft', 'Content-Type: text/plain\r\n');
  const d = await call('POST', base, {
    token: alice.graph,
    type: 'text/plain',
    body: mime.toString('base64'),
  });
  assert.equal(d.status, 201);
  const id = String(d.json?.id);
  const p = await call('PATCH', `${base}/${id}`, {
    token: alice.graph,
    type: 'application/json',
    body: JSON.stringify({ singleValueExtendedProperties: [{ id: 'Boolean 0x0E01', value: 'true' }] }),
  });
  assert.equal(p.status, 200);
  const small = randomBytes(1000);
  const att = await call('POST', `${base}/${id}/attachments`, {
    token: alice.graph,
    type: 'application/json',
    body: JSON.stringify({
      '@odata.type': '#microsoft.graph.fileAttachment',
      name: 'logo.png',
      contentType: 'image/png',
      contentBytes: small.toString('base64'),
      isInline: true,
      contentId: 'logo@x',
    }),
  });
  assert.equal(att.status, 201);
  const big = randomBytes(3 * UPLOAD_CHUNK_UNIT + 12_345);
  const s = await call('POST', `${base}/${id}/attachments/createUploadSession`, {
    token: alice.graph,
    type: 'application/json',
    body: JSON.stringify({
      AttachmentItem: {
        attachmentType: 'file',
        name: 'scan.pdf',
        size: big.length,
        contentType: 'application/pdf',
      },
    }),
  });
  assert.equal(s.status, 201);
  assert.deepEqual(s.json?.nextExpectedRanges, ['0-']);
  const uploadUrl = String(s.json?.uploadUrl);
  const put = (from: number, to: number, headers: Record<string, string> = {}) =>
    call('PUT', uploadUrl, {
      body: big.subarray(from, to),
      type: 'application/octet-stream',
      headers: { 'content-range': `bytes ${from}-${to - 1}/${big.length}`, ...headers },
    });
  // Chunk rules: no bearer token, 320 KiB multiples except the last, in order.
  assert.equal((await put(0, 2 * UPLOAD_CHUNK_UNIT, { authorization: `Bearer ${alice.graph}` })).status, 401);
  assert.equal((await put(0, UPLOAD_CHUNK_UNIT + 1)).status, 400);
  assert.equal((await put(UPLOAD_CHUNK_UNIT, 2 * UPLOAD_CHUNK_UNIT)).status, 416);
  assert.equal((await call('PUT', `${uploadUrl.split('?')[0]}?authtoken=wrong`, { body: 'x' })).status, 404);
  const first = await put(0, 2 * UPLOAD_CHUNK_UNIT);
  assert.equal(first.status, 200);
  assert.deepEqual(first.json?.nextExpectedRanges, [`${2 * UPLOAD_CHUNK_UNIT}-`]);
  assert.equal((await put(2 * UPLOAD_CHUNK_UNIT, 3 * UPLOAD_CHUNK_UNIT)).status, 200);
  assert.equal((await put(3 * UPLOAD_CHUNK_UNIT, big.length)).status, 201);
  assert.equal(graph.drafts(), 1);
  const accepted = graph.requests.filter((q) => q.call === 'upload' && q.status >= 200 && q.status < 300);
  assert.deepEqual(
    accepted.map((q) => q.contentRange),
    [
      `bytes 0-${2 * UPLOAD_CHUNK_UNIT - 1}/${big.length}`,
      `bytes ${2 * UPLOAD_CHUNK_UNIT}-${3 * UPLOAD_CHUNK_UNIT - 1}/${big.length}`,
      `bytes ${3 * UPLOAD_CHUNK_UNIT}-${big.length - 1}/${big.length}`,
    ],
  );
  const before = graph.received.length;
  assert.equal((await call('POST', `${base}/${id}/send`, { token: alice.graph })).status, 202);
  assert.equal(graph.drafts(), 0);
  const got = graph.received[before];
  assert.ok(got);
  assert.equal(got.path, 'draft');
  assert.ok(got.mime.equals(mime));
  assert.equal(got.deleteAfterSubmit, true);
  assert.deepEqual(
    got.attachments.map((a) => [a.name, a.contentType, a.isInline, a.contentId, a.bytes.length]),
    [
      ['logo.png', 'image/png', true, 'logo@x', small.length],
      ['scan.pdf', 'application/pdf', false, undefined, big.length],
    ],
  );
  assert.ok(got.attachments[0]?.bytes.equals(small));
  assert.ok(got.attachments[1]?.bytes.equals(big));
  // A sent draft is gone.
  assert.equal((await call('POST', `${base}/${id}/send`, { token: alice.graph })).status, 404);
});

test('a token without mail.readwrite may sendMail but not create drafts', async () => {
  const g = await op.mintGrant('hank@example.com');
  const t = await op.refresh(g.refresh_token, { resource: GRAPH, scope: 'mail.send' });
  assert.equal((await sendMail(t.access_token, mimeOf('h'), 'hank@example.com')).status, 202);
  const d = await call('POST', '/v1.0/users/hank@example.com/messages', {
    token: t.access_token,
    type: 'text/plain',
    body: mimeOf('h').toString('base64'),
  });
  assert.equal(d.status, 403);
});

test('injected failures answer as told, per call kind, and are counted', async () => {
  const before = graph.received.length;
  const [throttled, denied] = [graph.count('send_mail', 429), graph.count('create_draft', 403)];
  graph.failNext({ status: 429, retryAfter: 7, times: 2, call: 'send_mail' });
  graph.failNext({ status: 403, code: 'ErrorSendAsDenied', call: 'create_draft' });
  for (let i = 0; i < 2; i++) {
    const a = await sendMail(alice.graph, mimeOf('throttled'));
    assert.equal(a.status, 429);
    assert.equal(a.headers.get('retry-after'), '7');
    assert.equal(errorCode(a), 'ApplicationThrottled');
  }
  assert.equal((await sendMail(alice.graph, mimeOf('ok'))).status, 202);
  const d = await call('POST', `/v1.0/users/${ALICE}/messages`, {
    token: alice.graph,
    type: 'text/plain',
    body: mimeOf('d').toString('base64'),
  });
  assert.equal(d.status, 403);
  assert.equal(errorCode(d), 'ErrorSendAsDenied');
  for (const status of [503, 504, 500, 400, 413]) {
    graph.failNext({ status, ...(status === 503 ? { retryAfter: 1 } : {}) });
    const a = await sendMail(alice.graph, mimeOf(String(status)));
    assert.equal(a.status, status);
    assert.ok(errorCode(a));
    assert.equal(a.headers.get('retry-after'), status === 503 ? '1' : null);
  }
  assert.equal(graph.count('send_mail', 429) - throttled, 2);
  assert.equal(graph.count('create_draft', 403) - denied, 1);
  assert.equal(graph.received.length, before + 1, 'failed requests store nothing');
  assert.throws(() => graph.failNext({ status: 202 }), /not an error/);
});

test('a hanging request is never answered until the client gives up', async () => {
  graph.failNext({ status: 0, hang: true, call: 'send_mail' });
  const before = graph.received.length;
  const started = Date.now();
  await assert.rejects(
    fetch(`${graph.url}/v1.0/users/${ALICE}/sendMail`, {
      method: 'POST',
      headers: { authorization: `Bearer ${alice.graph}`, 'content-type': 'text/plain' },
      body: mimeOf('hang').toString('base64'),
      signal: AbortSignal.timeout(300),
    }),
    /TimeoutError|aborted/,
  );
  assert.ok(Date.now() - started >= 290);
  assert.equal(graph.requests.at(-1)?.status, 0);
  assert.equal(graph.received.length, before);
  assert.equal((await sendMail(alice.graph, mimeOf('after'))).status, 202, 'the rule was used up');
});
