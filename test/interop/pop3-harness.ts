import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type {
  Pop3ClientDriver,
  Pop3Limitation,
  Pop3Mechanism,
  Pop3Transport,
  Pop3Way,
} from '../helpers/clients/pop3/index.js';
import { type Stack, startStack } from '../helpers/stack.js';
import { lf } from './harness.js';
import {
  bigBody,
  cellFailure,
  differs,
  leadingFieldLength,
  observeRun,
  onWire,
  wholeMessage,
} from './smtp-harness.js';

/**
 * One proxy stack (oidc-provider ← Dovecot POP3) driven by real POP3 clients. A cell is one
 * client run: its own account and mailbox, seeded with one message of over 1 MiB; what the
 * client stored must then be those bytes, give or take what the client itself adds.
 */

export interface Pop3Cell {
  client: Pop3ClientDriver;
  transport: Pop3Transport;
  way: Pop3Way;
}

export interface Pop3CellResult {
  cell: Pop3Cell;
  pass: boolean;
  /** How the client logged in, as the proxy logged it ("login ok" for this account). */
  observedLogin: string;
  /** What was compared, for the matrix. */
  compared: string;
  seconds: number;
  /** Set for a cell the client is known not to manage; pass then means it failed just so. */
  limitation?: Pop3Limitation;
  failure?: string;
}

export const pop3CellName = (c: Pop3Cell) => `${c.client.name} · ${c.transport} · way ${c.way}`;

export const WANT_MECHANISM: Record<Exclude<Pop3Way, 'default'>, Pop3Mechanism> = {
  user: 'USER/PASS',
  plain: 'AUTH PLAIN',
  login: 'AUTH LOGIN',
};

export const expectedMechanism = (c: Pop3Cell): Pop3Mechanism =>
  c.way === 'default' ? c.client.defaultMechanism : WANT_MECHANISM[c.way];

/** The known limitation this cell runs into, if any. */
export function limitationOf(c: Pop3Cell): Pop3Limitation | undefined {
  return c.client.limitations?.find(
    (l) => (l.transport ?? c.transport) === c.transport && (l.way ?? 'default') === c.way,
  );
}

export async function startPop3Interop(): Promise<Stack> {
  const stack = await startStack({ logLevel: 'debug' });
  if (!stack.ports.pop3 || !stack.ports.pop3s) {
    await stack.close();
    throw new Error('the stack has no POP3 listeners (ports.pop3, ports.pop3s)');
  }
  return stack;
}

/**
 * The seeded message: over 1 MiB, CRLF line ends, with lines that are exactly "." (first and
 * last body line among them) and lines starting with ".", ".." and "..." — what POP3
 * dot-stuffing is about.
 */
export function seedMessage(login: string): Buffer {
  const text = wholeMessage(
    `sender-${login}@example.net`,
    `${login}@example.com`,
    `pop3 interop ${login}`,
    bigBody(true),
  );
  return onWire(text);
}

/**
 * What is wrong with what a client stored for `seed`: the header fields it declares it adds
 * must be on top, in order, and what follows must equal the seed (with LF line ends for a
 * client that converts them).
 */
export function checkRetrieved(
  client: Pick<Pop3ClientDriver, 'lineEnds' | 'adds'>,
  seed: Buffer,
  got: Buffer | undefined,
): { compared: string; problems: string[] } {
  const want = client.lineEnds === 'lf' ? lf(seed) : seed;
  const eol = client.lineEnds === 'lf' ? '\n' : '\r\n';
  const compared =
    (client.adds.length === 0
      ? 'whole message, exact'
      : `whole message after its ${client.adds.join(', ')}`) +
    (client.lineEnds === 'lf' ? ', CRLF → LF' : '');
  if (!got) return { compared, problems: ['the client stored no message'] };
  let rest = got;
  for (const name of client.adds) {
    const n = leadingFieldLength(rest, name, eol);
    if (n < 0)
      return { compared, problems: [`the stored message does not go on with the client's ${name} header`] };
    rest = rest.subarray(n);
  }
  return { compared, problems: rest.equals(want) ? [] : [differs(rest, want)] };
}

let seq = 0;

export async function runPop3Cell(stack: Stack, cell: Pop3Cell, timeoutMs = 45_000): Promise<Pop3CellResult> {
  const t0 = Date.now();
  const { client, transport } = cell;
  const login = `p${++seq}-${client.name.replace(/\W+/g, '')}-${transport}-${cell.way}`.toLowerCase();
  const acct = await stack.addAccount(login);
  const seed = seedMessage(login);
  await stack.dovecot.seed(acct.upstreamUser, seed);
  const limitation = limitationOf(cell);
  const workDir = mkdtempSync(join(tmpdir(), 'iop-pop3-client-'));
  try {
    const run = await client.retrieve({
      host: 'localhost',
      port: transport === 'implicit' ? stack.ports.pop3s : stack.ports.pop3,
      transport,
      caFile: stack.proxyCaFile,
      user: login,
      password: acct.password,
      way: cell.way,
      workDir,
      timeoutMs,
    });
    const seen = observeRun(stack, acct, run.transcript);
    const { transcript, observedLogin } = seen;
    const problems: string[] = [];
    let compared = '—';
    if (limitation) {
      // The client must still fail exactly as documented, without logging in.
      if (run.error !== limitation.error)
        problems.push(
          `known limitation changed: error ${JSON.stringify(run.error)}, documented ${JSON.stringify(limitation.error)}`,
        );
      if (!limitation.output.test(transcript))
        problems.push(`known limitation changed: the output does not match ${limitation.output}`);
      if (observedLogin !== '—')
        problems.push(`known limitation changed: the proxy logged a login (${observedLogin})`);
    } else {
      if (run.error) problems.push(run.error);
      if (observedLogin === '—') problems.push('the proxy logged no successful login for this account');
      const checked = checkRetrieved(client, seed, run.message);
      compared = checked.compared;
      problems.push(...checked.problems);
    }
    const failure = cellFailure(pop3CellName(cell), problems, seen);
    return {
      cell,
      pass: problems.length === 0,
      observedLogin,
      compared,
      seconds: (Date.now() - t0) / 1000,
      ...(limitation ? { limitation } : {}),
      ...(failure ? { failure } : {}),
    };
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }
}

const WAYS: Record<Pop3Way, string> = {
  default: 'default',
  user: 'USER/PASS forced',
  plain: 'AUTH PLAIN forced',
  login: 'AUTH LOGIN forced',
};

export function renderPop3Matrix(results: Pop3CellResult[], versions: Map<string, string>): string {
  const rows = results.map((r) => {
    const c = r.cell.client;
    const result = !r.pass ? '**FAIL**' : r.limitation ? 'known limitation (fails as documented)' : 'pass';
    return `| ${c.name} | ${versions.get(c.name) ?? '?'} | ${r.cell.transport} | ${WAYS[r.cell.way]} | ${r.observedLogin} | ${r.limitation ? '—' : c.stores} | ${r.compared} | ${result} |`;
  });
  const clients = [...new Set(results.map((r) => r.cell.client))];
  const notes = clients
    .filter((c) => c.notes)
    .map((c) => `- ${c.name} (${versions.get(c.name)}): ${c.notes}.`);
  const limits = clients.flatMap((c) => (c.limitations ?? []).map((l) => `- ${c.name}: ${l.why}.`));
  return `# POP3 interoperability matrix

Each cell: the client logs in at the proxy with an app password and retrieves (RETR, kept on
the server) a message of over 1 MiB (lines ".", ".x", "..") that was seeded into its own
Dovecot mailbox. "Logged in with" is what the proxy logged.
${results.filter((r) => r.pass).length} of ${results.length} cells pass.

| client | version | client TLS | way | logged in with (observed) | stored as | compared | result |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join('\n')}

${notes.join('\n')}

Known limitations:
${limits.join('\n')}
`;
}

/** Where the Markdown matrix goes: $POP3_INTEROP_MATRIX, else a file in the temp dir. */
export function writePop3Matrix(markdown: string): string {
  const path = process.env.POP3_INTEROP_MATRIX || join(tmpdir(), 'imap-oauth-proxy-pop3-interop-matrix.md');
  writeFileSync(path, markdown);
  return path;
}
