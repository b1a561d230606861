import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import type { ProxyProcess } from '../../bench/setup.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import { type FakeGraph, startFakeGraph } from '../../helpers/fake-graph.js';
import { GRAPH_AUDIENCE } from '../../helpers/graph-stack.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import { cleartext, configText, seedUsers, serve, type User, writeConfig } from './harness.js';

/**
 * Graph delivery answers 250 only after Graph accepted the message, and holds nothing it could
 * lose: `serve` (a child process, real OP) is killed with SIGKILL while Graph (a fake: no real
 * one is reachable here) has the message in hand and has not answered. The device gets no 250,
 * so it still owns the message and sends it again to the restarted proxy; Graph ends with it once.
 */

let op: TestOP;
let graph: FakeGraph;
let dir: string;
let file: string;
let user: User;
let smtpPort: number;
const key = generateKeyLine('k1');
const running = new Set<ProxyProcess>();

before(async () => {
  op = await startOP({
    accessTokenTtl: 3600,
    resources: { [GRAPH_AUDIENCE]: { scope: 'mail.send mail.readwrite' } },
  });
  graph = await startFakeGraph({
    introspect: { url: op.introspection.url, clientId: op.introspection.id, secret: op.introspection.secret },
    audience: GRAPH_AUDIENCE,
  });
  dir = mkdtempSync(join(tmpdir(), 'iop-graph-crash-'));
  smtpPort = await freePort();
  file = join(dir, 'config.yaml');
  writeConfig(
    file,
    configText({
      dataDir: dir,
      key,
      level: 'info',
      listeners: [cleartext('smtp', 'smtp', smtpPort)],
      adminPort: await freePort(),
      provider: {
        ...opProviderConfig(op),
        smtp_delivery: 'graph',
        graph_url: graph.url,
        graph_resource: GRAPH_AUDIENCE,
        graph_timeout_seconds: 60,
      },
    }),
  );
  user = (await seedUsers(file, op, 1))[0]!;
});
after(async () => {
  for (const p of running) await p.stop(2000).catch(() => undefined);
  await graph?.stop();
  await op?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(): Promise<ProxyProcess> {
  const p = await serve(file);
  running.add(p);
  void p.exited.then(() => running.delete(p));
  return p;
}

const MESSAGE = Buffer.from(
  'From: user0@example.com\r\nTo: bob@example.net\r\nSubject: crash\r\nMessage-ID: <crash-1@example.com>\r\n\r\nscan attached\r\n',
);

/** A device's submission up to the end of DATA; resolves with the client waiting for the final reply. */
async function submit(): Promise<SmtpClient> {
  const c = await connectSmtp({ host: '127.0.0.1', port: smtpPort, tls: 'none', timeoutMs: 15_000 });
  assert.equal((await c.ehlo('scanner.example.net')).code, 250);
  const ir = Buffer.from(`\0${user!.login}\0${user!.password}`).toString('base64');
  assert.equal((await c.command(`AUTH PLAIN ${ir}`)).code, 235);
  assert.equal((await c.command('MAIL FROM:<user0@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<bob@example.net>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(Buffer.concat([MESSAGE, Buffer.from('.\r\n')]));
  return c;
}

test('SIGKILL while Graph holds the message: no 250, nothing delivered; the device resends and it arrives once', async () => {
  const proxy = await start();
  graph.failNext({ status: 0, hang: true, call: 'send_mail', times: 1 });
  const c = await submit();
  await until(
    () => graph.requests.some((r) => r.call === 'send_mail' && r.status === 0),
    15_000,
    'the sendMail request to reach Graph',
  );
  process.kill(proxy.pid, 'SIGKILL');
  assert.equal(await withDeadline(proxy.exited, 10_000, 'the proxy to die'), 'SIGKILL');
  const after = await c.reply(10_000).then(
    (r) => `${r.code} ${r.text}`,
    (err: Error) => `no reply (${err.message})`,
  );
  assert.doesNotMatch(after, /^250/, 'the device was never told the message was accepted');
  assert.equal(graph.received.length, 0, 'Graph never accepted it');
  c.close();

  // The device still has the message: it sends it again once the proxy is back.
  await start();
  const again = await submit();
  const r = await again.reply(30_000);
  assert.equal(r.code, 250, r.text);
  assert.equal(graph.received.length, 1);
  assert.ok(graph.received[0]!.mime.equals(MESSAGE), 'delivered exactly as sent');
  again.close();
});
