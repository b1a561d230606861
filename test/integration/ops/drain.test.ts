import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { generateKeyLine } from '../../../src/store/crypto.js';
import type { ProxyProcess } from '../../bench/setup.js';
import { withDeadline } from '../../helpers/deadline.js';
import type { Dovecot } from '../../helpers/dovecot.js';
import type { TestOP } from '../../helpers/op.js';
import { freePort } from '../../helpers/ports.js';
import {
  type Client,
  cleartext,
  configText,
  openClient,
  type Proto,
  providerFor,
  refused,
  seedUsers,
  serve,
  startUpstreams,
  type Upstreams,
  type User,
  writeConfig,
} from './harness.js';

/**
 * SIGTERM to `serve` (a child process, real OP and Dovecot): clients still before login get
 * their protocol's goodbye at once, spliced sessions go on for limits.shutdown_drain_seconds
 * and are then closed, and the process exits 0; a second SIGTERM during the drain ends it at once.
 */

const DRAIN_S = 2;
const PROTOS: Proto[] = ['imap', 'smtp', 'pop3'];

let op: TestOP;
let dovecot: Dovecot;
let dir: string;
let user: User;
let ports: Record<Proto, number>;
let upstreams: Upstreams;
const running = new Set<ProxyProcess>();

/** Writes a config with cleartext IMAP, SMTP and POP3 listeners (fresh ports) and the given drain, and starts serve. */
async function start(drainSeconds: number): Promise<ProxyProcess> {
  ports = { imap: await freePort(), smtp: await freePort(), pop3: await freePort() };
  const file = join(dir, `config-${drainSeconds}.yaml`);
  writeConfig(
    file,
    configText({
      dataDir: dir,
      key,
      level: 'info',
      listeners: PROTOS.map((p) => cleartext(p, p, ports[p])),
      adminPort: await freePort(),
      limits: { shutdown_drain_seconds: drainSeconds },
      provider: providerFor(op, {
        imap: dovecot.imapsPort,
        smtp: dovecot.submissionsPort,
        pop3: dovecot.pop3sPort,
        caFile: dovecot.caFile,
      }),
    }),
  );
  if (!user) [user] = await seedUsers(file, op, 1).then((u) => u as [User]);
  const p = await serve(file);
  running.add(p);
  return p;
}
const key = generateKeyLine('k1');

/** One client of each protocol before login and one spliced (logged in to Dovecot). */
async function openAll(): Promise<{ preauth: Client[]; spliced: Client[] }> {
  const preauth: Client[] = [];
  const spliced: Client[] = [];
  for (const p of PROTOS) {
    preauth.push(await openClient(p, ports[p], false, `${p} before login`));
    const c = await openClient(p, ports[p], false, `${p} spliced`);
    await c.login(user);
    await c.check();
    spliced.push(c);
  }
  return { preauth, spliced };
}

describe('SIGTERM drains: goodbye before login, spliced sessions run for the drain window', () => {
  before(async () => {
    upstreams = await startUpstreams();
    ({ op, dovecot } = upstreams);
    dir = mkdtempSync(join(tmpdir(), 'iop-drain-'));
  });

  after(async () => {
    for (const p of running) await p.stop(5000);
    await upstreams?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('each protocol: the goodbye line at once, spliced sessions answer during the drain, exit 0 after it', async () => {
    const proxy = await start(DRAIN_S);
    const { preauth, spliced } = await openAll();
    const sent = Date.now();
    process.kill(proxy.pid, 'SIGTERM');
    const goodbyes = await Promise.all(preauth.map((c) => c.goodbye(1000)));
    assert.equal(goodbyes[0], '* BYE Server shutting down');
    // Without server_name the SMTP listener names itself by the host name.
    assert.equal(goodbyes[1], `421 4.7.0 ${hostname()} Server shutting down, try again later`);
    assert.equal(goodbyes[2], '-ERR [SYS/TEMP] Server shutting down, try again later');
    // New connections are refused at once; the spliced sessions still reach Dovecot.
    for (const p of PROTOS) assert.equal(await refused(ports[p]), true, `${p} port closed during the drain`);
    for (const c of spliced) await c.check();
    assert.ok(Date.now() - sent < DRAIN_S * 1000, 'the checks ran inside the drain window');
    // At the end of the window they are closed and the process exits 0.
    await Promise.all(spliced.map((c) => c.goodbye(DRAIN_S * 1000 + 3000).catch(() => '')));
    const code = await withDeadline(proxy.exited, DRAIN_S * 1000 + 5000, 'serve to exit after the drain');
    const took = Date.now() - sent;
    running.delete(proxy);
    assert.equal(code, 0, proxy.output().slice(-2000));
    assert.ok(took >= DRAIN_S * 1000 - 100, `exited after the drain window (${took} ms)`);
    assert.ok(took < DRAIN_S * 1000 + 4000, `exited within the drain and a few seconds (${took} ms)`);
    assert.match(proxy.output(), /"msg":"stopped"/);
  });

  test('a second SIGTERM during the drain ends the process at once, not with 0', async (t) => {
    const proxy = await start(60);
    const { spliced } = await openAll();
    process.kill(proxy.pid, 'SIGTERM');
    await spliced[0]!.check();
    const sent = Date.now();
    process.kill(proxy.pid, 'SIGTERM');
    const code = await withDeadline(proxy.exited, 3000, 'serve to exit on the second SIGTERM');
    running.delete(proxy);
    t.diagnostic(`exit after the second SIGTERM: ${code}`);
    assert.ok(Date.now() - sent < 3000);
    assert.equal(code, 1, 'the second signal reaches serve: it logs and exits 1 (not killed by the signal)');
    assert.match(proxy.output(), /second signal: exiting now/);
    for (const c of spliced) c.close();
  });
});
