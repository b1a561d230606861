#!/usr/bin/env node
// Runs one or more test suites with Node's own test runner (TypeScript through tsx).
// Usage: node test/run.mjs [unit] [integration] [interop] [packaging] [all]   (default: unit integration)
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

// Per-test timeout of each suite: a test that hangs fails with its name instead of stalling the run.
// packaging runs the Dockerfile's npm ci and build, and the benchmark: the slowest tests.
const TIMEOUT_MS = { unit: 120_000, integration: 300_000, interop: 300_000, packaging: 900_000 };
const SUITES = Object.keys(TIMEOUT_MS);
let wanted = process.argv.slice(2).filter((a) => !a.startsWith('-'));
const extra = process.argv.slice(2).filter((a) => a.startsWith('-'));
if (wanted.length === 0) wanted = ['unit', 'integration'];
if (wanted.includes('all')) wanted = SUITES;
const unknown = wanted.filter((s) => !SUITES.includes(s));
if (unknown.length > 0) {
  console.error(`unknown suite: ${unknown.join(', ')} (known: ${SUITES.join(', ')}, all)`);
  process.exit(2);
}

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

// The packaging tests (npm ci + build, a timed benchmark) each want the machine to themselves.
const CONCURRENCY = { packaging: '1' };
let failed = false;
// One runner per suite, so each gets its own timeout; every suite runs even after a failure.
for (const suite of wanted) {
  const files = find(join('test', suite));
  if (files.length === 0) {
    console.error(`no test files for: ${suite}`);
    process.exit(1);
  }
  const r = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--test',
      `--test-concurrency=${process.env.TEST_CONCURRENCY ?? CONCURRENCY[suite] ?? '2'}`,
      `--test-timeout=${TIMEOUT_MS[suite]}`,
      '--test-reporter=spec',
      ...extra,
      ...files,
    ],
    { stdio: 'inherit' },
  );
  if (r.status !== 0) {
    console.error(`suite ${suite} failed (status ${r.status ?? r.signal})`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
