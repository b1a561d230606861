import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { type ProxyApp, startProxy } from '../../../src/app/app.js';
import { parseConfig } from '../../../src/config/load.js';
import { createLogger } from '../../../src/log.js';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { assertNoSecretsLogged } from '../../helpers/stack.js';
import { get } from './scrape.js';

const basic = (user: string, pass: string) => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;

describe('admin HTTP: /healthz, /readyz and /metrics behind a bearer token (the proxy as serve starts it)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-admin-'));
  const token = randomBytes(24).toString('base64url');
  const chunks: string[] = [];
  let app: ProxyApp;
  let port: number;

  before(async () => {
    const yaml = `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.1/32] }
admin: { address: 127.0.0.1, port: 0, metrics_bearer_token: "${token}" }
providers:
  local:
    preset: generic
    token_endpoint: http://127.0.0.1:9/token
    client_id: proxy
    client_auth: none
    allow_insecure_http: true
    upstream: { host: 127.0.0.1, port: 9 }
`;
    const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
    const sink = new Writable({
      write(chunk, _enc, cb) {
        chunks.push(String(chunk));
        cb();
      },
    });
    app = await startProxy(config, {
      log: createLogger({ level: 'debug', format: 'json', destination: sink }),
    });
    port = app.adminAddress.port;
  });
  after(async () => {
    await app?.close({ drainMs: 0 });
    rmSync(dir, { recursive: true, force: true });
    assertNoSecretsLogged(chunks.join(''), [token]);
  });

  test('/healthz answers 200 while the process runs', async () => {
    const r = await get(port, '/healthz');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'ok\n');
  });

  test('/readyz answers 200 when the store is reachable and the listeners are bound', async () => {
    const r = await get(port, '/readyz');
    assert.equal(r.status, 200);
    assert.equal(r.body, 'ready\n');
  });

  test('/metrics without, or with a wrong, token is 401 with a challenge; nothing leaks', async () => {
    for (const auth of [
      undefined,
      'Bearer wrong',
      `Bearer ${token}x`,
      basic('admin', token),
      basic('metrics', 'x'),
    ]) {
      const r = await get(port, '/metrics', auth ? { authorization: auth } : {});
      assert.equal(r.status, 401, String(auth));
      assert.match(String(r.headers['www-authenticate']), /Bearer realm="metrics"/);
      assert.doesNotMatch(r.body, /imap_proxy_/);
    }
  });

  test('/metrics with the bearer token, or Basic metrics:<token>, is the Prometheus exposition', async () => {
    for (const auth of [`Bearer ${token}`, basic('metrics', token)]) {
      const r = await get(port, '/metrics', { authorization: auth });
      assert.equal(r.status, 200);
      assert.match(String(r.headers['content-type']), /^text\/plain; version=0\.0\.4/);
      assert.match(r.body, /^imap_proxy_build_info\{version="0\.0\.0",node="v\d+/m);
      assert.match(r.body, /^imap_proxy_grants\{status="needs_consent"\} 0$/m);
      assert.match(r.body, /^imap_proxy_process_resident_memory_bytes \d+/m);
    }
  });

  test('/readyz answers 503 naming the store once the store is unreachable', async () => {
    await app.store.close();
    const r = await get(port, '/readyz');
    assert.equal(r.status, 503);
    assert.equal(r.body, 'not ready: store\n');
    assert.equal((await get(port, '/healthz')).status, 200, 'alive, just not ready');
  });
});
