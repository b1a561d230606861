import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';
import { PROTOCOL_NAMES } from '../../../src/config/schema.js';
import { PROTOCOLS } from '../../../src/protocols/index.js';

const SRC = resolve('src');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Every relative import of a source file, resolved to a path under src/. */
function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) =>
    relative(SRC, resolve(dirname(file), m[1] ?? '')),
  );
}

test('core/ and net/ import nothing from protocols/ (one folder per protocol)', () => {
  const offenders: string[] = [];
  for (const folder of ['core', 'net', 'sasl']) {
    for (const f of files(join(SRC, folder))) {
      for (const target of imports(f)) {
        if (target.startsWith('protocols')) offenders.push(`${relative(SRC, f)} → ${target}`);
      }
    }
  }
  assert.deepEqual(offenders, []);
});

test('a protocol folder imports no other protocol folder', () => {
  const offenders: string[] = [];
  for (const name of readdirSync(join(SRC, 'protocols'))) {
    const dir = join(SRC, 'protocols', name);
    if (!statSync(dir).isDirectory()) continue;
    for (const f of files(dir)) {
      for (const target of imports(f)) {
        const m = /^protocols\/([^/]+)\//.exec(target);
        if (m && m[1] !== name) offenders.push(`${relative(SRC, f)} → ${target}`);
      }
    }
  }
  assert.deepEqual(offenders, []);
});

test('the registry and the config schema name the same protocols, each with a folder', () => {
  assert.deepEqual(Object.keys(PROTOCOLS).sort(), [...PROTOCOL_NAMES].sort());
  for (const name of PROTOCOL_NAMES) assert.ok(statSync(join(SRC, 'protocols', name)).isDirectory(), name);
});

test('composition roots live apart from the pipeline: only app/ and commands/ import app/', () => {
  const offenders: string[] = [];
  for (const f of files(SRC)) {
    const from = relative(SRC, f);
    if (from.startsWith('app/') || from.startsWith('commands/')) continue;
    for (const target of imports(f)) if (target.startsWith('app/')) offenders.push(`${from} → ${target}`);
  }
  assert.deepEqual(offenders, []);
});
