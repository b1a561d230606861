import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

/**
 * `check-config` and `serve` as child processes: a config that cannot work is refused with
 * `file:line:col: key: message` and exit 1 by both, never with a stack trace at start.
 */

const ROOT = join(import.meta.dirname, '..', '..', '..');
const CLI = join(ROOT, 'src', 'cli.ts');
const dir = mkdtempSync(join(tmpdir(), 'iop-check-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const files = { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem'), ca: join(dir, 'ca.pem') };
for (const f of Object.values(files)) writeFileSync(f, '-----BEGIN TEST-----\n');
mkdirSync(join(dir, 'a-directory'));

const GOOD = `data_dir: ${JSON.stringify(join(dir, 'data'))}
encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners:
  - name: imaps
    port: 0
    tls: implicit
    cert_file: ${JSON.stringify(files.cert)}
    key_file: ${JSON.stringify(files.key)}
    proxy_protocol:
      trusted:
        - 10.0.0.0/8
        - 192.0.2.7
        - 2001:db8::/32
providers:
  local:
    issuer: https://login.example.com
    client_id: proxy
    client_secret: s3cret
    upstream:
      host: 127.0.0.1
      ca_file: ${JSON.stringify(files.ca)}
admin: { port: 0 }
`;

interface Run {
  code: number | null;
  out: string;
  err: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', CLI, ...args],
      { cwd: ROOT, timeout: 60_000, env: { ...process.env, LOG_LEVEL: 'warn' } },
      (error, out, err) => resolve({ code: error ? (error.code as number | null) : 0, out, err }),
    );
  });
}

let n = 0;
function write(text: string): string {
  const file = join(dir, `config-${n++}.yaml`);
  writeFileSync(file, text);
  return file;
}

/** `line:col` of the first occurrence of `needle` in `text` (1-based, as the CLI reports). */
function at(text: string, needle: string): string {
  const lines = text.split('\n');
  const i = lines.findIndex((l) => l.includes(needle));
  assert.ok(i >= 0, `"${needle}" is in the config`);
  return `${i + 1}:${lines[i]!.indexOf(needle) + 1}`;
}

/** Both commands refuse the config with exactly these lines and no stack trace. */
async function refused(text: string, expected: (file: string) => string[]): Promise<void> {
  const file = write(text);
  for (const command of ['check-config', 'serve']) {
    const r = await cli([command, '--config', file]);
    assert.equal(r.code, 1, `${command}: ${r.err}`);
    const lines = r.err.trim().split('\n');
    assert.equal(lines[0], 'configuration error:', `${command}: ${r.err}`);
    assert.deepEqual(lines.slice(1), expected(file), command);
    assert.doesNotMatch(r.err, /^\s+at /m, `${command} printed a stack trace`);
  }
}

describe('check-config and serve refuse configs that cannot work', () => {
  test('the baseline config is valid', async () => {
    const file = write(GOOD);
    const r = await cli(['check-config', '--config', file]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, `${file}: OK (1 listener(s), 1 provider(s))\n`);
  });

  test('a bad CIDR in proxy_protocol.trusted', async () => {
    const text = GOOD.replace('- 192.0.2.7', '- 10.0.0.0/33').replace('- 2001:db8::/32', '- intranet');
    await refused(text, (file) => [
      `${file}:${at(text, '10.0.0.0/33')}: listeners[0].proxy_protocol.trusted[1]: "10.0.0.0/33": prefix length must be 0-32`,
      `${file}:${at(text, 'intranet')}: listeners[0].proxy_protocol.trusted[2]: "intranet" is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)`,
    ]);
    const empty = GOOD.replace('- 192.0.2.7', '- 192.0.2.0/');
    await refused(empty, (file) => [
      `${file}:${at(empty, '192.0.2.0/')}: listeners[0].proxy_protocol.trusted[1]: "192.0.2.0/" is not an IP address or CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)`,
    ]);
  });

  test('an http:// issuer or endpoint without allow_insecure_http', async () => {
    const text = GOOD.replace('https://login.example.com', 'http://login.example.com').replace(
      '    client_id: proxy',
      '    token_endpoint: http://login.example.com/token\n    client_id: proxy',
    );
    const message = 'http:// needs allow_insecure_http: true on this provider (local testing only)';
    await refused(text, (file) => [
      `${file}:${at(text, 'http://login.example.com')}: providers.local.issuer: ${message}`,
      `${file}:${at(text, 'http://login.example.com/token')}: providers.local.token_endpoint: ${message}`,
    ]);
    const allowed = write(
      text.replace('    client_id: proxy', '    allow_insecure_http: true\n    client_id: proxy'),
    );
    assert.equal((await cli(['check-config', '--config', allowed])).code, 0);
  });

  test('an unreadable ca_file, cert_file or key_file', async () => {
    const missing = join(dir, 'missing-ca.pem');
    const text = GOOD.replace(JSON.stringify(files.ca), JSON.stringify(missing))
      .replace(JSON.stringify(files.cert), JSON.stringify(join(dir, 'a-directory')))
      .replace(JSON.stringify(files.key), 'nope/key.pem');
    await refused(text, (file) => [
      `${file}:${at(text, JSON.stringify(join(dir, 'a-directory')))}: listeners[0].cert_file: cannot read ${join(dir, 'a-directory')} (EISDIR)`,
      `${file}:${at(text, 'nope/key.pem')}: listeners[0].key_file: cannot read ${join(dir, 'nope', 'key.pem')} (ENOENT)`,
      `${file}:${at(text, JSON.stringify(missing))}: providers.local.upstream.ca_file: cannot read ${missing} (ENOENT)`,
    ]);
  });

  test('Graph delivery: an http:// graph_url needs allow_insecure_http; no SMTP upstream needed', async () => {
    const text = GOOD.replace(
      'listeners:\n',
      'listeners:\n  - { name: submissions, protocol: smtp, port: 0, tls: implicit }\n',
    ).replace(
      '    client_id: proxy',
      '    smtp_delivery: graph\n    graph_url: http://graph.example.test\n    client_id: proxy',
    );
    await refused(text, (file) => [
      `${file}:${at(text, 'http://graph.example.test')}: providers.local.graph_url: http:// needs allow_insecure_http: true on this provider (local testing only)`,
    ]);
  });
});

describe('check-config explains how each provider sends mail', () => {
  const smtpListener = 'listeners:\n  - { name: submissions, protocol: smtp, port: 0, tls: implicit }\n';
  test('graph: what Graph delivery does and which permissions it needs', async () => {
    const file = write(
      GOOD.replace('listeners:\n', smtpListener).replace(
        '    client_id: proxy',
        '    smtp_delivery: graph\n    client_id: proxy',
      ),
    );
    const r = await cli(['check-config', '--config', file]);
    assert.equal(r.code, 0, r.err);
    const note = r.out.split('\n').find((l) => l.startsWith('note: providers.local.smtp_delivery: graph'));
    assert.ok(note, r.out);
    assert.match(note, /Microsoft Graph \(https:\/\/graph\.microsoft\.com\)/);
    assert.match(note, /Mail\.Send/);
    assert.match(note, /250 only after Graph accepted/);
  });

  test('smtp: the splice, and the 5.7.139 failure where SMTP AUTH is off', async () => {
    const file = write(
      GOOD.replace('listeners:\n', smtpListener).replace(
        '    upstream:\n',
        '    upstreams:\n      smtp: { host: smtp.example.test }\n    upstream:\n',
      ),
    );
    const r = await cli(['check-config', '--config', file]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^note: providers\.local\.smtp_delivery: smtp — .*smtp\.example\.test.*5\.7\.139/m);
  });

  test('no SMTP listener: nothing to explain', async () => {
    const file = write(GOOD);
    assert.doesNotMatch((await cli(['check-config', '--config', file])).out, /note:/);
  });
});

describe('--config before or after the command', () => {
  test('both orders, and --config=FILE and -c, read the same file', async () => {
    const file = write(GOOD);
    const ok = `${file}: OK (1 listener(s), 1 provider(s))\n`;
    for (const args of [
      ['check-config', '--config', file],
      ['--config', file, 'check-config'],
      [`--config=${file}`, 'check-config'],
      ['-c', file, 'check-config'],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.err}`);
      assert.equal(r.out, ok, args.join(' '));
    }
  });

  test('serve takes --config before the command too (it reads that file and refuses it)', async () => {
    const text = GOOD.replace('- 192.0.2.7', '- 10.0.0.0/33');
    const file = write(text);
    const r = await cli(['--config', file, 'serve']);
    assert.equal(r.code, 1, r.err);
    assert.match(r.err, new RegExp(`${file}:${at(text, '10.0.0.0/33')}: listeners\\[0\\]`));
  });

  test('a missing value is a usage error (exit 2) that says so', async () => {
    for (const args of [
      ['--config'],
      ['--config', 'serve'],
      ['--config', '--help'],
      ['check-config', '--config'],
      ['--config=', 'check-config'],
    ]) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, /--config needs a file name/, args.join(' '));
    }
  });
});
