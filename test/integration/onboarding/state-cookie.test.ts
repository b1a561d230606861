import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ProxyApp, startProxy } from '../../../src/app/app.js';
import { parseConfig } from '../../../src/config/load.js';
import { createLogger } from '../../../src/log.js';
import { get } from '../observability/scrape.js';
import { unreachableProviderConfig } from './local-provider.js';

/**
 * A state cookie that is not what /connect/start set — undecodable, truncated or tampered —
 * gets the "Sign-in expired, start again" page, never a 500.
 */
describe('the OAuth callback with a malformed state cookie', { timeout: 60_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-state-cookie-'));
  let app: ProxyApp;
  let port: number;
  let issued: string;

  before(async () => {
    const yaml = unreachableProviderConfig(
      dir,
      '{ address: 127.0.0.1, port: 0, connect_page: true, public_url: https://mail.example.test }',
    );
    const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
    app = await startProxy(config, { log: createLogger({ level: 'silent' }) });
    port = app.adminAddress.port;
    const start = await get(port, '/connect/start?provider=local');
    assert.equal(start.status, 302);
    const setCookie = String(start.headers['set-cookie'] ?? '');
    const m = /^iop_oauth=([^;]+);/.exec(setCookie);
    assert.ok(m, setCookie);
    issued = m[1]!;
  });
  after(async () => {
    await app?.close({ drainMs: 0 });
    rmSync(dir, { recursive: true, force: true });
  });

  async function callback(cookie: string): Promise<void> {
    const r = await get(port, '/oauth/callback?code=x&state=y', { cookie });
    assert.equal(r.status, 400, `cookie ${cookie.slice(0, 40)}: ${r.body.slice(0, 200)}`);
    assert.match(r.body, /Sign-in expired/);
    assert.match(r.body, /<a href="\/connect">Start again<\/a>/);
    assert.match(String(r.headers['set-cookie']), /^iop_oauth=; .*Max-Age=0/, 'the cookie is cleared');
  }

  test('undecodable percent-encoding', async () => {
    await callback('iop_oauth=%E0%A4%A');
    await callback('iop_oauth=%zz; other=1');
  });

  test('garbage and an empty value', async () => {
    await callback('iop_oauth=garbage');
    await callback('iop_oauth=');
    await callback('iop_oauth');
  });

  test('the issued cookie truncated or with one character changed', async () => {
    const plain = decodeURIComponent(issued);
    await callback(`iop_oauth=${encodeURIComponent(plain.slice(0, plain.length - 5))}`);
    await callback(`iop_oauth=${encodeURIComponent(plain.slice(0, plain.lastIndexOf('.')))}`);
    const i = plain.length - 10;
    const flipped = `${plain.slice(0, i)}${plain[i] === 'A' ? 'B' : 'A'}${plain.slice(i + 1)}`;
    await callback(`iop_oauth=${encodeURIComponent(flipped)}`);
  });
});
