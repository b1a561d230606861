import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { type ProxyApp, startProxy } from '../../../src/app/app.js';
import { parseConfig } from '../../../src/config/load.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics, type Metrics } from '../../../src/metrics.js';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { RawImapClient } from '../../helpers/imap-client.js';

// The proxy as serve starts it: wrong passwords from one address make the limiter lock it, its
// next connections wait in the tarpit the config sets, another address is greeted at once, and
// a reload changes the tarpit for connections accepted from then on.

const dir = mkdtempSync(join(tmpdir(), 'iop-tarpit-'));
const key = generateKeyLine('k1');
const yaml = (tarpitSeconds: number) => `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${key}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.0/8] }
admin: { address: 127.0.0.1, port: 0 }
limits: { tarpit_seconds: ${tarpitSeconds}, tarpit_per_address: 5, tarpit_total: 10 }
limiter: { free_failures: 0, max_failures: 1 }
providers:
  local:
    preset: generic
    token_endpoint: http://127.0.0.1:9/token
    client_id: proxy
    client_auth: none
    allow_insecure_http: true
    upstream: { host: 127.0.0.1, port: 9 }
`;
const config = (tarpitSeconds: number) =>
  parseConfig(yaml(tarpitSeconds), join(dir, 'config.yaml'), {}).config;

let app: ProxyApp;
let metrics: Metrics;
let port: number;
before(async () => {
  metrics = createMetrics({ defaults: false });
  app = await startProxy(config(0.8), { log: silentLogger, metrics });
  port = app.addresses.plain!.port;
});
after(async () => {
  await app?.close({ drainMs: 0 });
  rmSync(dir, { recursive: true, force: true });
});

async function from(localAddress: string): Promise<RawImapClient> {
  const s = connect({ port, host: '127.0.0.1', localAddress });
  await once(s, 'connect');
  return RawImapClient.wrap(s);
}

async function closedAfter(c: RawImapClient): Promise<{ ms: number; said: string }> {
  const t0 = performance.now();
  const said = await c.readToClose(10_000);
  return { ms: performance.now() - t0, said };
}

const held = async () =>
  (await metrics.tarpitConnections.get()).values
    .filter((v) => v.labels.result === 'held' && v.labels.reason === 'address_locked')
    .reduce((n, v) => n + v.value, 0);

test('a locked address waits tarpit_seconds before it is closed; another address is greeted meanwhile; a reload changes the wait', async () => {
  // Limiter threshold for an address: max_failures (1) × 3 wrong passwords.
  for (let i = 0; i < 3; i++) {
    const c = await from('127.0.0.1');
    await c.readLine();
    const reply = await c.command('a', `LOGIN nobody${i} wrong-password`);
    assert.match(reply.at(-1)!, /^a NO \[AUTHENTICATIONFAILED\]/);
    c.close();
  }
  const locked = closedAfter(await from('127.0.0.1'));
  const other = await from('127.0.0.2');
  assert.match(await other.readLine(2000), /^\* OK /, 'another address is greeted at once');
  other.close();
  const first = await locked;
  assert.equal(first.said, '', 'closed without a word');
  assert.ok(first.ms >= 700, `held ${first.ms.toFixed(0)} ms, not the configured 800`);
  assert.equal(await held(), 1);

  const result = await app.reload(config(0));
  assert.equal(result.result, 'success', result.problems.join('; '));
  const after = await closedAfter(await from('127.0.0.1'));
  assert.ok(after.ms < 500, `closed after ${after.ms.toFixed(0)} ms with the tarpit off`);
  assert.equal(await held(), 1, 'not held once tarpit_seconds is 0');
});
