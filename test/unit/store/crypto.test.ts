import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { loadConfig } from '../../../src/config/load.js';
import { ConfigError } from '../../../src/errors.js';
import {
  aadFor,
  DecryptError,
  generateKeyLine,
  Keyring,
  keyFilePath,
  parseKeyLine,
} from '../../../src/store/crypto.js';

const dir = mkdtempSync(join(tmpdir(), 'iop-crypto-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const enc = (o: Partial<{ key: string; key_file: string; create_key_file: boolean }>) => ({
  create_key_file: false,
  ...o,
});

describe('Keyring', () => {
  const aad = aadFor('grants', 1, 'refresh_token');

  test('round-trips and never stores the plaintext or a fixed IV', () => {
    const k = Keyring.random('k1');
    const a = k.encrypt('secret-refresh-token', aad);
    const b = k.encrypt('secret-refresh-token', aad);
    assert.match(a, /^v1\.k1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    assert.notEqual(a, b);
    assert.ok(!a.includes('secret'));
    assert.equal(k.decrypt(a, aad), 'secret-refresh-token');
  });

  test('wrong key, unknown key id, tampering and moved values fail with DecryptError', () => {
    const k = Keyring.random('k1');
    const blob = k.encrypt('tok', aad);
    assert.throws(() => Keyring.random('k1').decrypt(blob, aad), DecryptError);
    assert.throws(() => Keyring.random('k2').decrypt(blob, aad), /unknown key id "k1"/);
    const parts = blob.split('.');
    const ct = Buffer.from(parts[3]!, 'base64url');
    ct[0]! ^= 1;
    parts[3] = ct.toString('base64url');
    assert.throws(() => k.decrypt(parts.join('.'), aad), DecryptError);
    assert.throws(() => k.decrypt(blob, aadFor('grants', 2, 'refresh_token')), DecryptError);
    assert.throws(() => k.decrypt(blob, aadFor('grants', 1, 'access_token')), DecryptError);
    assert.throws(() => k.decrypt('garbage', aad), DecryptError);
  });

  test('older keys still decrypt; new values use the first key', () => {
    const oldKey = { id: 'old', key: randomBytes(32) };
    const before = new Keyring([oldKey]).encrypt('x', aad);
    const both = new Keyring([{ id: 'new', key: randomBytes(32) }, oldKey]);
    assert.equal(both.decrypt(before, aad), 'x');
    assert.equal(Keyring.keyIdOf(both.encrypt('x', aad)), 'new');
  });

  test('fromConfig: inline key, key file, malformed and missing keys', () => {
    const line = generateKeyLine('main');
    assert.equal(Keyring.fromConfig(enc({ key: line }), dir).currentId, 'main');
    assert.throws(() => Keyring.fromConfig(enc({ key: 'main:dG9vc2hvcnQ=' }), dir), ConfigError);
    assert.throws(() => Keyring.fromConfig(enc({ key: 'nocolon' }), dir), ConfigError);
    assert.throws(() => Keyring.fromConfig(enc({}), dir), /key generate/);
    assert.throws(
      () => Keyring.fromConfig(enc({ key_file: join(dir, 'absent.key') }), dir),
      /does not exist/,
    );
    const f = join(dir, 'two.key');
    writeFileSync(f, `# comment\n${generateKeyLine('b')}\n${generateKeyLine('a')}\n`);
    const k = Keyring.fromConfig(enc({ key_file: f }), dir);
    assert.equal(k.currentId, 'b');
    assert.ok(k.has('a'));
    // The error names the key id but never echoes key material.
    const bad = 'x:' + randomBytes(16).toString('base64');
    assert.throws(
      () => parseKeyLine(bad, 'test'),
      (e: Error) => !e.message.includes(bad.slice(2)),
    );
  });

  test('create_key_file makes a 0600 key file once, with a warning', () => {
    const warnings: string[] = [];
    const log = { warn: (_o: unknown, m: string) => warnings.push(m) } as unknown as Parameters<
      typeof Keyring.fromConfig
    >[2];
    // An empty home: no key at the old default location to fall back to.
    const home = mkdtempSync(join(dir, 'home-'));
    const k1 = Keyring.fromConfig(enc({ key_file: 'master.key', create_key_file: true }), dir, log, home);
    const path = join(dir, 'master.key');
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /NEW ENCRYPTION KEY/);
    const content = readFileSync(path, 'utf8');
    const k2 = Keyring.fromConfig(enc({ key_file: 'master.key', create_key_file: true }), dir, log, home);
    assert.equal(readFileSync(path, 'utf8'), content);
    assert.equal(k2.decrypt(k1.encrypt('v', aad), aad), 'v');
  });

  test('the example config keeps the key in data_dir ($IMAP_PROXY_DATA), beside the database', () => {
    const env = { HOME: '/home/x', IMAP_PROXY_DATA: '/srv/iop' };
    const { config } = loadConfig('config/example.yaml', env);
    assert.equal(config.store.sqlite_path, '/srv/iop/proxy.db');
    assert.equal(keyFilePath(config.encryption.key_file!, config.data_dir), '/srv/iop/master.key');
    const home = loadConfig('config/example.yaml', {}).config;
    assert.equal(
      keyFilePath(home.encryption.key_file!, home.data_dir),
      join(homedir(), '.local', 'share', 'imap-oauth-proxy', 'master.key'),
    );
    const explicit = loadConfig('config/example.yaml', {
      ...env,
      IMAP_PROXY_KEY_FILE: '/etc/iop/keys',
    }).config;
    assert.equal(keyFilePath(explicit.encryption.key_file!, explicit.data_dir), '/etc/iop/keys');
  });

  test('a key left at the old default location in the home directory is still read, with a warning', () => {
    const home = mkdtempSync(join(dir, 'home-'));
    const dataDir = mkdtempSync(join(dir, 'data-'));
    const warnings: string[] = [];
    const log = { warn: (_o: unknown, m: string) => warnings.push(m) } as unknown as Parameters<
      typeof Keyring.fromConfig
    >[2];
    const quickStart = enc({ key_file: 'master.key', create_key_file: true });
    mkdirSync(join(home, '.local', 'share', 'imap-oauth-proxy'), { recursive: true });
    writeFileSync(
      join(home, '.local', 'share', 'imap-oauth-proxy', 'master.key'),
      `${generateKeyLine('old')}\n`,
    );
    const k = Keyring.fromConfig(quickStart, dataDir, log, home);
    assert.equal(k.currentId, 'old', 'the existing key, not a new one');
    assert.equal(existsSync(join(dataDir, 'master.key')), false, 'no second key was created');
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /old default location: move it to the data directory/);
    // Once the key is in data_dir, that one wins and nothing is said.
    writeFileSync(join(dataDir, 'master.key'), `${generateKeyLine('moved')}\n`);
    assert.equal(Keyring.fromConfig(quickStart, dataDir, log, home).currentId, 'moved');
    assert.equal(warnings.length, 1);
    // With no old key a new one is created in data_dir.
    const fresh = mkdtempSync(join(dir, 'data-'));
    Keyring.fromConfig(quickStart, fresh, log, mkdtempSync(join(dir, 'home-')));
    assert.ok(existsSync(join(fresh, 'master.key')));
    assert.match(warnings[1]!, /NEW ENCRYPTION KEY/);
  });
});
