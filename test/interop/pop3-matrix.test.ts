import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { fetchmail, getmail, POP3_CLIENTS, poplib } from '../helpers/clients/pop3/index.js';
import type { Stack } from '../helpers/stack.js';
import { lf } from './harness.js';
import {
  checkRetrieved,
  expectedMechanism,
  limitationOf,
  type Pop3Cell,
  type Pop3CellResult,
  pop3CellName,
  renderPop3Matrix,
  runPop3Cell,
  seedMessage,
  startPop3Interop,
  writePop3Matrix,
} from './pop3-harness.js';

// Every client × client TLS it has × (default, each forced way), plus the cells a client is known to fail.
const CELLS: Pop3Cell[] = POP3_CLIENTS.flatMap((client) =>
  (['starttls', 'implicit'] as const).flatMap((transport) =>
    (['default', 'user', 'plain', 'login'] as const).map((way) => ({ client, transport, way })),
  ),
).filter(
  (c) =>
    limitationOf(c) !== undefined ||
    (c.client.transports.includes(c.transport) && (c.way === 'default' || c.client.ways.includes(c.way))),
);

describe('interop: real POP3 clients through the proxy to Dovecot POP3', { concurrency: 4 }, () => {
  let stack: Stack | undefined;
  const results: Pop3CellResult[] = [];
  const versions = new Map<string, string>();

  before(async () => {
    stack = await startPop3Interop();
    for (const c of POP3_CLIENTS) versions.set(c.name, await c.version());
  });

  after(async () => {
    try {
      if (results.length > 0) {
        const order = (r: Pop3CellResult) => CELLS.indexOf(r.cell);
        const md = renderPop3Matrix(
          results.sort((a, b) => order(a) - order(b)),
          versions,
        );
        console.log(`POP3 interop matrix written to ${writePop3Matrix(md)}`);
      }
    } finally {
      await stack?.close();
    }
  });

  for (const cell of CELLS) {
    test(pop3CellName(cell), { timeout: 90_000 }, async () => {
      const r = await runPop3Cell(stack!, cell);
      results.push(r);
      assert.ok(r.pass, r.failure);
      if (r.limitation) return;
      assert.equal(
        r.observedLogin,
        expectedMechanism(cell),
        `${pop3CellName(cell)}: the proxy saw a different login`,
      );
    });
  }
});

// The check each cell relies on, fed what a faulty proxy could hand a client (hand-made: no real
// server here garbles mail on purpose), so a matrix that passes means the bytes were compared.
describe('POP3 interop: the retrieval check fails on what a faulty proxy would deliver', () => {
  const seed = seedMessage('check');
  const replaceOnce = (b: Buffer, a: string, z: string) =>
    Buffer.from(b.toString('latin1').replace(a, z), 'latin1');
  const RECEIVED =
    'Received: from localhost [127.0.0.1]\n\tby vm with POP3 (fetchmail-6.4.37)\n\tfor <root@localhost>;\n';
  const GETMAIL =
    'Return-Path: <unknown>\nDelivered-To: unknown\nReceived: from localhost\n    by localhost\n';
  const crlf = { lineEnds: 'crlf', adds: [] } as const;

  test("the exact bytes pass; a client's own headers, declared, pass", () => {
    assert.deepEqual(checkRetrieved(crlf, seed, seed).problems, []);
    assert.deepEqual(
      checkRetrieved(fetchmail, seed, Buffer.concat([Buffer.from(RECEIVED), lf(seed)])).problems,
      [],
    );
    assert.deepEqual(
      checkRetrieved(getmail, seed, Buffer.concat([Buffer.from(GETMAIL), lf(seed)])).problems,
      [],
    );
  });
  test('a "." line left dot-stuffed', () =>
    assert.notDeepEqual(
      checkRetrieved(poplib, seed, replaceOnce(seed, '\r\n.\r\n', '\r\n..\r\n')).problems,
      [],
    ));
  test('a "." line lost', () =>
    assert.notDeepEqual(checkRetrieved(poplib, seed, replaceOnce(seed, '\r\n.\r\n', '\r\n')).problems, []));
  test('a bare LF in a CRLF client', () =>
    assert.notDeepEqual(
      checkRetrieved(crlf, seed, replaceOnce(seed, 'line 000007', 'line\n000007')).problems,
      [],
    ));
  test('cut short', () =>
    assert.notDeepEqual(checkRetrieved(crlf, seed, seed.subarray(0, 65536)).problems, []));
  test('nothing stored', () => assert.notDeepEqual(checkRetrieved(crlf, seed, undefined).problems, []));
  test('the client header missing, or one more header than the client adds', () => {
    assert.notDeepEqual(checkRetrieved(fetchmail, seed, lf(seed)).problems, []);
    const twice = Buffer.concat([Buffer.from(RECEIVED + RECEIVED), lf(seed)]);
    assert.notDeepEqual(checkRetrieved(fetchmail, seed, twice).problems, []);
  });
});
