import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import type { ProxyProcess } from '../../bench/setup.js';
import { until } from '../../helpers/deadline.js';
import { type FakeGraph, startFakeGraph } from '../../helpers/fake-graph.js';
import { GRAPH_AUDIENCE } from '../../helpers/graph-stack.js';
import { freePort } from '../../helpers/ports.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import {
  cleartext,
  configText,
  metric,
  providerFor,
  seedUsers,
  serve,
  startUpstreams,
  type Upstreams,
  type User,
  writeConfig,
} from './harness.js';

/**
 * A provider switched between smtp and graph delivery by a reload (SIGHUP to `serve`, a child
 * process; real OP and Dovecot submission with its recording sink; Graph is a fake because no
 * real one is reachable here): new logins go the new way at once, a session already spliced to
 * the SMTP server goes on there, and switching back works the same.
 */

let up: Upstreams;
let graph: FakeGraph;
let dir: string;
let file: string;
let proxy: ProxyProcess;
let user: User;
let smtpPort: number;
let adminPort: number;
const key = generateKeyLine('k1');

function config(mode: 'smtp' | 'graph'): string {
  const graphKeys = { smtp_delivery: 'graph', graph_url: graph.url, graph_resource: GRAPH_AUDIENCE };
  return configText({
    dataDir: dir,
    key,
    level: 'info',
    listeners: [cleartext('submission', 'smtp', smtpPort)],
    adminPort,
    provider: providerFor(
      up.op,
      { imap: up.dovecot.imapsPort, smtp: up.dovecot.submissionsPort, caFile: up.dovecot.caFile },
      mode === 'graph' ? graphKeys : {},
    ),
  });
}

before(async () => {
  up = await startUpstreams({ resources: { [GRAPH_AUDIENCE]: { scope: 'mail.send mail.readwrite' } } });
  graph = await startFakeGraph({
    introspect: {
      url: up.op.introspection.url,
      clientId: up.op.introspection.id,
      secret: up.op.introspection.secret,
    },
    audience: GRAPH_AUDIENCE,
  });
  dir = mkdtempSync(join(tmpdir(), 'iop-graph-reload-'));
  smtpPort = await freePort();
  adminPort = await freePort();
  file = join(dir, 'config.yaml');
  writeConfig(file, config('smtp'));
  user = (await seedUsers(file, up.op, 1))[0]!;
  proxy = await serve(file);
});
after(async () => {
  await proxy?.stop(5000);
  await graph?.stop();
  await up?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function login(): Promise<SmtpClient> {
  const c = await connectSmtp({ host: '127.0.0.1', port: smtpPort, tls: 'none', timeoutMs: 15_000 });
  assert.equal((await c.ehlo('scanner.example.net')).code, 250);
  const ir = Buffer.from(`\0${user.login}\0${user.password}`).toString('base64');
  const r = await c.command(`AUTH PLAIN ${ir}`);
  assert.equal(r.code, 235, r.text);
  return c;
}

/** Sends one message carrying `marker`; resolves with the final reply's text. */
async function send(c: SmtpClient, marker: string): Promise<string> {
  assert.equal((await c.command(`MAIL FROM:<${user.login}>`)).code, 250);
  assert.equal((await c.command('RCPT TO:<bob@example.net>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(
    `From: ${user.login}\r\nTo: bob@example.net\r\nSubject: ${marker}\r\nMessage-ID: <${marker}@example.com>\r\n\r\nhello\r\n.`,
  );
  const r = await c.reply(30_000);
  assert.equal(r.code, 250, r.text);
  return r.text;
}

const atSink = (marker: string) => up.sink.messages().some((m) => m.data.includes(`<${marker}@example.com>`));
const atGraph = (marker: string) => graph.received.some((m) => m.mime.includes(`<${marker}@example.com>`));

async function reload(mode: 'smtp' | 'graph', n: number): Promise<void> {
  writeConfig(file, config(mode));
  process.kill(proxy.pid, 'SIGHUP');
  await until(
    async () => (await metric(adminPort, 'imap_proxy_config_reloads_total', { result: 'success' })) === n,
    15_000,
    `reload ${n} to be applied`,
  );
}

test('smtp → graph → smtp by SIGHUP: new logins follow at once, a spliced session stays where it was', async () => {
  const old = await login();
  await send(old, 'reload-1');
  await until(() => atSink('reload-1'), 10_000, 'message 1 at the SMTP server');

  await reload('graph', 1);
  const viaGraph = await login();
  assert.match(await send(viaGraph, 'reload-2'), /Microsoft Graph/);
  assert.ok(atGraph('reload-2'), 'message 2 went through Graph');
  assert.ok(!atSink('reload-2'));

  // The session spliced before the reload still talks to the SMTP server.
  await send(old, 'reload-3');
  await until(() => atSink('reload-3'), 10_000, 'message 3 at the SMTP server');
  assert.ok(!atGraph('reload-3'));

  await reload('smtp', 2);
  const back = await login();
  await send(back, 'reload-4');
  await until(() => atSink('reload-4'), 10_000, 'message 4 at the SMTP server');
  assert.ok(!atGraph('reload-4'));
  // The Graph session from before goes on through Graph.
  assert.match(await send(viaGraph, 'reload-5'), /Microsoft Graph/);
  for (const c of [old, viaGraph, back]) c.close();
});
