import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type ProxyApp, startProxy } from '../../../src/app/app.js';
import { parseConfig } from '../../../src/config/load.js';
import { createLogger } from '../../../src/log.js';
import { generateKeyLine } from '../../../src/store/crypto.js';
import { withDeadline } from '../../helpers/deadline.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { FormDriver } from './form-driver.js';

const IMAP_SCOPE = 'https://outlook.office.com/IMAP.AccessAsUser.All';
const SMTP_SCOPE = 'https://outlook.office.com/SMTP.Send';

/**
 * Registers before/after hooks in the current suite: a real oidc-provider and a proxy whose admin
 * server runs /connect against it with `listeners`; upstreams are never dialled.
 */
function useConnectProxy(listeners: string): { app: ProxyApp; base: string } {
  const dir = mkdtempSync(join(tmpdir(), 'iop-connect-settings-'));
  const ctx = {} as { app: ProxyApp; base: string };
  let op: TestOP | undefined;
  before(async () => {
    op = await startOP({ loopbackCallback: true });
    const local = opProviderConfig(op);
    const yaml = `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
${listeners}
admin: { address: 127.0.0.1, port: 0, connect_page: true, imap_host: "mail.example.test", allowed_domains: [example.com] }
providers:
  local:
    preset: oidc
    issuer: ${local.issuer}
    client_id: ${local.client_id}
    client_secret: ${local.client_secret}
    allow_insecure_http: true
    timeout_seconds: 5
    upstreams: { imap: { host: 127.0.0.1, port: 9 }, smtp: { host: 127.0.0.1, port: 9 } }
  ms: { preset: microsoft, client_id: ms-client, client_secret: ms-secret }
  msgraph: { preset: microsoft, client_id: ms-client, client_secret: ms-secret, smtp_delivery: graph }
`;
    const { config } = parseConfig(yaml, join(dir, 'config.yaml'), {});
    ctx.app = await startProxy(config, { log: createLogger({ level: 'silent' }) });
    ctx.base = `http://127.0.0.1:${ctx.app.adminAddress.port}`;
    // The callback URL needs the admin port, known only after listen(0); routes read it per request.
    config.admin.public_url = ctx.base;
  });
  after(async () => {
    await ctx.app?.close({ drainMs: 0 });
    await op?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return ctx;
}

/** Signs `user` in through /connect at the real IdP; returns the result page's HTML. */
async function connect(base: string, user: string): Promise<string> {
  const browser = new FormDriver();
  const done = await withDeadline(
    (async () => browser.signIn(await browser.go(`${base}/connect/start?provider=local`), user))(),
    30_000,
    'the /connect sign-in',
  );
  assert.equal(done.status, 200, done.html.slice(0, 500));
  assert.match(done.html, /Mailbox connected/);
  return done.html;
}

/** The rows of the settings table for one protocol as [header, cells...] text, or undefined. */
function settingsTable(html: string, protocol: string): string[][] | undefined {
  const table = new RegExp(`<table id="settings-${protocol}">([\\s\\S]*?)</table>`).exec(html)?.[1];
  if (table === undefined) return undefined;
  return [...table.matchAll(/<tr>([\s\S]*?)<\/tr>/g)].map((row) =>
    [...(row[1] ?? '').matchAll(/<t[hd][^>]*>([^<]*)<\/t[hd]>/g)].map((c) => c[1] ?? ''),
  );
}

/** The authorization URL's scopes when /connect/start sends the browser to `provider`. */
async function startScopes(base: string, provider: string): Promise<string[]> {
  const res = await fetch(`${base}/connect/start?provider=${provider}`, { redirect: 'manual' });
  assert.equal(res.status, 302);
  return new URL(res.headers.get('location') ?? '').searchParams.get('scope')?.split(' ') ?? [];
}

describe('/connect result page with IMAP and SMTP listeners', { timeout: 90_000 }, () => {
  const proxy = useConnectProxy(
    `  - { name: imaps, address: 127.0.0.1, port: 0, tls: implicit }
  - { name: imap, address: 127.0.0.1, port: 0, tls: starttls }
  - { name: submissions, address: 127.0.0.1, protocol: smtp, port: 0, tls: implicit }
  - { name: submission, address: 127.0.0.1, protocol: smtp, port: 0, tls: starttls }
  - { name: smtp-plain, address: 127.0.0.1, protocol: smtp, port: 0, tls: none }`,
  );

  test('shows the outgoing (SMTP) server with each TLS port and its security beside the incoming (IMAP) one', async () => {
    const html = await connect(proxy.base, 'dave@example.com');
    const port = (name: string) => String(proxy.app.addresses[name]!.port);
    const common = [
      ['Username', 'dave@example.com'],
      ['Password', 'the app password above'],
      ['Authentication', 'normal password'],
    ];
    assert.deepEqual(settingsTable(html, 'imap'), [
      ['Server', 'mail.example.test'],
      ['Port', port('imaps'), 'SSL/TLS'],
      ['Port', port('imap'), 'STARTTLS'],
      ...common,
    ]);
    assert.deepEqual(settingsTable(html, 'smtp'), [
      ['Server', 'mail.example.test'],
      ['Port', port('submissions'), 'SSL/TLS'],
      ['Port', port('submission'), 'STARTTLS'],
      ...common,
    ]);
    assert.ok(!html.includes(port('smtp-plain')), 'a cleartext listener is never offered');
    assert.ok(
      html.indexOf('<h3>Incoming mail (IMAP)</h3>') < html.indexOf('<h3>Outgoing mail (SMTP)</h3>'),
      'both headings, incoming first',
    );
  });

  test('/connect/start asks the Microsoft preset for SMTP.Send beside the IMAP scope', async () => {
    const scopes = await startScopes(proxy.base, 'ms');
    assert.ok(scopes.includes(IMAP_SCOPE) && scopes.includes(SMTP_SCOPE), scopes.join(' '));
    assert.ok(scopes.includes('offline_access'));
  });

  test('/connect/start asks a Graph-delivery provider for Graph Mail.Send and Mail.ReadWrite instead of SMTP.Send', async () => {
    const scopes = await startScopes(proxy.base, 'msgraph');
    assert.ok(scopes.includes(IMAP_SCOPE), scopes.join(' '));
    assert.ok(scopes.includes('https://graph.microsoft.com/Mail.Send'), scopes.join(' '));
    assert.ok(scopes.includes('https://graph.microsoft.com/Mail.ReadWrite'), scopes.join(' '));
    assert.ok(!scopes.includes(SMTP_SCOPE), 'SMTP AUTH is not used: no SMTP.Send');
  });
});

describe('/connect result page with IMAP listeners only', { timeout: 90_000 }, () => {
  const proxy = useConnectProxy('  - { name: imaps, address: 127.0.0.1, port: 0, tls: implicit }');

  test('shows no outgoing-mail settings', async () => {
    const html = await connect(proxy.base, 'erin@example.com');
    assert.deepEqual(settingsTable(html, 'imap')?.slice(0, 2), [
      ['Server', 'mail.example.test'],
      ['Port', String(proxy.app.addresses.imaps!.port), 'SSL/TLS'],
    ]);
    assert.equal(settingsTable(html, 'smtp'), undefined);
    assert.doesNotMatch(html, /Outgoing mail|SMTP/);
  });

  test('/connect/start asks the Microsoft preset for the IMAP scope only', async () => {
    const scopes = await startScopes(proxy.base, 'ms');
    assert.ok(scopes.includes(IMAP_SCOPE), scopes.join(' '));
    assert.ok(!scopes.includes(SMTP_SCOPE), scopes.join(' '));
  });
});
