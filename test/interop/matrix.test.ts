import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { versionOf } from '../helpers/clients/exec.js';
import { ALL_CLIENTS, type ClientDriver, curl, imapflow, imaplib, mbsync } from '../helpers/clients/index.js';
import { FAULTS, type FaultResult, runFault } from './faults.js';
import {
  type Cell,
  type CellResult,
  cellName,
  type Interop,
  runCell,
  startInterop,
  UPSTREAMS,
} from './harness.js';
import { renderMatrix, writeMatrix } from './report.js';

// Every client × client transport × login way on one upstream setting (implicit TLS, XOAUTH2);
// a subset of clients over the other three upstream (TLS × mechanism) settings.
const MAIN = UPSTREAMS[0]!;
const UPSTREAM_SUBSET: ClientDriver[] = [curl, imaplib, mbsync, imapflow];
const CELLS: Cell[] = [
  ...ALL_CLIENTS.flatMap((client) =>
    (['starttls', 'implicit'] as const).flatMap((transport) =>
      (['default', ...client.ways] as const).map((way) => ({ client, transport, way, upstream: MAIN })),
    ),
  ),
  ...UPSTREAMS.slice(1).flatMap((upstream) =>
    UPSTREAM_SUBSET.map((client) => ({
      client,
      transport: 'implicit' as const,
      way: 'default' as const,
      upstream,
    })),
  ),
];
const FAULT_CLIENTS: ClientDriver[] = [imaplib, curl];

describe('interop: real clients through the proxy to Dovecot', { concurrency: 4 }, () => {
  let env: Interop | undefined;
  const results: CellResult[] = [];
  const faults: FaultResult[] = [];
  const versions = new Map<string, string>();

  before(async () => {
    env = await startInterop();
    for (const c of ALL_CLIENTS) versions.set(c.name, await c.version());
  });

  after(async () => {
    try {
      if (results.length > 0 || faults.length > 0) {
        const dovecot = await versionOf('dovecot', ['--version'], /^\S+/);
        const order = (r: CellResult) => CELLS.indexOf(r.cell);
        const md = renderMatrix(
          results.sort((a, b) => order(a) - order(b)),
          faults,
          versions,
          `Dovecot ${dovecot}`,
        );
        console.log(`interop matrix written to ${writeMatrix(md)}`);
      }
    } finally {
      await env?.close();
    }
  });

  for (const cell of CELLS) {
    test(cellName(cell), async () => {
      const r = await runCell(env!, cell);
      results.push(r);
      const limitation = cell.client.limitations?.[cell.way];
      if (limitation) {
        // A documented client limitation: the day it passes, the docs must change.
        assert.equal(r.pass, false, `no longer a limitation, update the README: ${limitation.why}`);
        // It must fail exactly as documented: any other failure is a regression, not the limitation.
        assert.equal(r.clientError, limitation.error, r.failure);
        assert.match(r.clientOutput, limitation.output, r.failure);
        assert.equal(r.observedLogin, '—', 'the proxy saw no login for this account');
        return;
      }
      assert.ok(r.pass, r.failure);
      const want = { login: 'LOGIN', 'sasl-login': 'AUTHENTICATE LOGIN' } as Record<string, string>;
      if (want[cell.way])
        assert.equal(r.observedLogin, want[cell.way], 'the client logged in the way it was told to');
    });
  }

  for (const fault of FAULTS) {
    for (const client of FAULT_CLIENTS) {
      test(`${fault.name} → ${client.name} is told [${fault.expectCode}]`, async () => {
        const r = await runFault(env!.stacks.get('implicit-xoauth2')!, fault, client);
        faults.push(r);
        assert.ok(r.pass, r.failure);
      });
    }
  }
});
