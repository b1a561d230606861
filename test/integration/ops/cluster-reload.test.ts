import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import type { ProxyProcess } from '../../bench/setup.js';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';
import { cleartext, configText, logLines, metric, providerFor, serve, writeConfig } from './harness.js';

/**
 * `serve` with `workers: 2` as a child process: SIGHUP to the primary reloads every worker (a
 * listener added by the file is served by both), each worker counts its reload under its own
 * `worker` label, and a file that does not validate is refused once, by the primary. Nothing
 * here logs in: the OP is only the provider the config must name; the IMAP upstream port has no
 * server behind it and is never dialled.
 */

const RELOADS = 'imap_proxy_config_reloads_total';
const CONNECTIONS = 'imap_proxy_connections_total';

let op: TestOP;
let dir: string;
let configFile: string;
let proxy: ProxyProcess;
const ports: Record<'plain' | 'added' | 'admin' | 'upstream', number> = {} as never;
const key = generateKeyLine('k1');

function config(withAdded: boolean, level = 'info'): string {
  return configText({
    dataDir: dir,
    key,
    level,
    workers: 2,
    listeners: [
      cleartext('plain', 'imap', ports.plain),
      ...(withAdded ? [cleartext('added', 'imap', ports.added)] : []),
    ],
    adminPort: ports.admin,
    provider: providerFor(op, { imap: ports.upstream }),
  });
}

async function greeting(port: number): Promise<string> {
  const c = await RawImapClient.connect(port);
  try {
    return await c.readLine(5000);
  } finally {
    c.close();
  }
}

describe('reload with workers: 2', () => {
  before(async () => {
    op = await startOP({ accessTokenTtl: 3600 });
    dir = mkdtempSync(join(tmpdir(), 'iop-cluster-reload-'));
    for (const k of ['plain', 'added', 'admin', 'upstream'] as const) ports[k] = await freePort();
    configFile = join(dir, 'config.yaml');
    writeConfig(configFile, config(false));
    proxy = await serve(configFile);
  });

  after(async () => {
    await proxy?.stop(5000);
    await op?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('SIGHUP to the primary: both workers serve the added listener and count their reload', async () => {
    await assert.rejects(greeting(ports.added), /ECONNREFUSED/, 'not listening before the reload');
    writeConfig(configFile, config(true));
    process.kill(proxy.pid, 'SIGHUP');
    await until(
      () => logLines(proxy, 'config reloaded').length >= 3,
      30_000,
      'the workers and the primary to reload',
      20,
    );
    for (let i = 0; i < 8; i++) assert.match(await greeting(ports.added), /^\* OK /);
    for (const worker of ['1', '2']) {
      assert.ok(
        (await metric(ports.admin, CONNECTIONS, { listener: 'added', worker })) >= 1,
        `worker ${worker} took connections on the added listener`,
      );
      assert.equal(await metric(ports.admin, RELOADS, { result: 'success', worker }), 1, `worker ${worker}`);
    }
    assert.equal(await metric(ports.admin, RELOADS, { result: 'success', worker: 'primary' }), 0);
  });

  test('a file that does not validate is refused once, by the primary; the workers keep serving', async () => {
    writeConfig(configFile, config(true, 'loud'));
    process.kill(proxy.pid, 'SIGHUP');
    const refusedMsg = 'reload refused: the config does not validate; the running config stays';
    await until(() => logLines(proxy, refusedMsg).length === 1, 15_000, 'the refusal to be logged', 20);
    assert.equal(await metric(ports.admin, RELOADS, { result: 'invalid', worker: 'primary' }), 1);
    for (const worker of ['1', '2']) {
      assert.equal(await metric(ports.admin, RELOADS, { result: 'invalid', worker }), 0, `worker ${worker}`);
      assert.equal(await metric(ports.admin, RELOADS, { result: 'success', worker }), 1, `worker ${worker}`);
    }
    for (let i = 0; i < 4; i++) assert.match(await greeting(ports.added), /^\* OK /);
    assert.match(await greeting(ports.plain), /^\* OK /);
  });
});
