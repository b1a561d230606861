#!/usr/bin/env node
// Runs one or more test suites with Node's own test runner (TypeScript through tsx).
// Usage: node test/run.mjs [unit] [integration] [interop] [all]   (default: unit integration)
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const SUITES = ['unit', 'integration', 'interop'];
let wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const extra = process.argv.slice(2).filter((a) => a.startsWith('-'));
if (wanted.length === 0) wanted = ['unit', 'integration'];
if (wanted.includes('all')) wanted = SUITES;

function find(dir) {
  let out = [];
  let entries = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries.sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out = out.concat(find(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const files = wanted.flatMap((s) => find(join('test', s)));
if (files.length === 0) {
  console.error(`no test files for: ${wanted.join(', ')}`);
  process.exit(1);
}
const concurrency = process.env.TEST_CONCURRENCY ?? '2';
const r = spawnSync(
  process.execPath,
  [
    '--import',
    'tsx',
    '--test',
    `--test-concurrency=${concurrency}`,
    '--test-reporter=spec',
    ...extra,
    ...files,
  ],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
