import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FaultResult } from './faults.js';
import { type CellResult, upstreamKey } from './harness.js';

/** Where the Markdown matrix goes: $INTEROP_MATRIX, else a file in the temp dir. */
export function matrixPath(): string {
  return process.env.INTEROP_MATRIX || join(tmpdir(), 'imap-oauth-proxy-interop-matrix.md');
}

const WAYS: Record<string, string> = {
  default: 'default',
  login: 'LOGIN forced',
  'sasl-login': 'AUTH=LOGIN asked',
};
const way = (w: string) => WAYS[w] ?? w;

export function renderMatrix(
  cells: CellResult[],
  faults: FaultResult[],
  versions: Map<string, string>,
  upstreamVersion: string,
): string {
  const rows = cells.map((r) => {
    const c = r.cell;
    return `| ${c.client.name} | ${versions.get(c.client.name) ?? '?'} | ${c.transport} | ${way(c.way)} | ${r.observedLogin} | ${c.upstream.tls} | ${r.observedUpstream || '—'} | ${result(r)} |`;
  });
  const limits = [
    ...new Set(
      cells.flatMap((r) => {
        const l = r.cell.client.limitations?.[r.cell.way];
        return l
          ? [`- ${r.cell.client.name} (${versions.get(r.cell.client.name)}), ${way(r.cell.way)}: ${l.why}.`]
          : [];
      }),
    ),
    ...new Set(
      cells.flatMap((r) =>
        r.cell.client.notes
          ? [`- ${r.cell.client.name} (${versions.get(r.cell.client.name)}): ${r.cell.client.notes}.`]
          : [],
      ),
    ),
  ];
  const faultRows = faults.map(
    (f) =>
      `| ${f.fault.name} | ${f.client.name} | ${f.observedLogin} | [${f.fault.expectCode}] | [${f.told}] | ${f.pass ? 'pass' : '**FAIL**'} |`,
  );
  const passed = cells.filter((c) => c.pass).length;
  const limited = cells.filter((c) => !c.pass && c.cell.client.limitations?.[c.cell.way]).length;
  return `# Interoperability matrix

Upstream: ${upstreamVersion} (oauth2 passdb introspecting oidc-provider tokens), through the proxy.
Each cell: log in, SELECT INBOX, fetch a seeded message, compare its bytes, log out.
"Logged in with" is what the proxy logged for that session; "upstream SASL" is what the proxy's
metrics counted as a successful upstream authentication. Clients that store mail locally
(fetchmail, mbsync, offlineimap3, mutt, neomutt) are compared with CRLF → LF, and mbsync's own
X-TUID header removed.
${passed} of ${cells.length} cells pass; ${limited} are documented client limitations (below).

| client | version | client transport | login way | logged in with (observed) | upstream TLS | upstream SASL (observed) | result |
| --- | --- | --- | --- | --- | --- | --- | --- |
${rows.join('\n')}

## Provider failure shapes (scripted fake upstream), as a legacy client sees them

| upstream behaviour | client | logged in with | expected | client was told | result |
| --- | --- | --- | --- | --- | --- |
${faultRows.join('\n')}

## Known client limitations

${limits.length ? limits.join('\n') : 'None.'}

Upstream settings covered: ${[...new Set(cells.map((c) => upstreamKey(c.cell.upstream)))].join(', ')}.
`;
}

function result(r: CellResult): string {
  if (r.cell.client.limitations?.[r.cell.way])
    return r.pass ? '**passes: limitation gone**' : 'client limitation';
  return r.pass ? 'pass' : '**FAIL**';
}

export function writeMatrix(markdown: string): string {
  const path = matrixPath();
  writeFileSync(path, markdown);
  return path;
}
