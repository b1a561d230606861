import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { runAccountCommand } from '../../../src/commands/account.js';
import type { CommandContext } from '../../../src/commands/context.js';
import { runGrantCommand } from '../../../src/commands/grant.js';
import { parseConfig } from '../../../src/config/load.js';
import { silentLogger } from '../../../src/log.js';
import { generateKeyLine, Keyring } from '../../../src/store/crypto.js';
import type { SqliteGrantStore } from '../../../src/store/sqlite.js';
import { startOP, type TestOP } from '../../helpers/op.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';
import { devicePrompt, FormDriver } from './form-driver.js';

/** CLI onboarding against a real oidc-provider: device flow, app-only grant, revocation. */
describe('account connect / account add --grant app-only / grant revoke', () => {
  let op: TestOP;
  let store: SqliteGrantStore | undefined;
  let out: string[];
  let err: string[];
  let ctx: CommandContext;

  before(async () => {
    op = await startOP({ deviceFlow: true, clientCredentials: true });
  });
  after(async () => {
    await store?.close();
    await op?.close();
  });

  const fresh = async (): Promise<SqliteGrantStore> => {
    await store?.close();
    const keyring = Keyring.random('k1');
    store = await memoryDbStore(keyring);
    out = [];
    err = [];
    const { config } = parseConfig(
      `
listeners: [{ name: imaps, port: 0, tls: implicit }]
encryption: { key: "${generateKeyLine('k1')}" }
admin: { public_url: "https://proxy.example.test" }
providers:
  local:
    preset: oidc
    issuer: ${op.issuer}
    client_id: ${op.client.id}
    client_secret: ${op.client.secret}
    allow_insecure_http: true
    app_only_scope: mail
    upstream: { host: 127.0.0.1 }
`,
      '/tmp/onboarding-test.yaml',
      {},
    );
    ctx = {
      config,
      store,
      keyring,
      out: (s) => out.push(s),
      err: (s) => err.push(s),
      stdin: new PassThrough(),
      log: silentLogger,
    };
    return store;
  };

  test('account connect: the user approves the printed code at the IdP, the refresh grant lands on the account', async () => {
    const store = await fresh();
    await store.createAccount(
      { login: 'dana@example.com', upstreamUser: 'dana@example.com', provider: 'local' },
      't',
    );
    const user = new FormDriver();
    // The "user" acts as soon as the CLI has printed the prompt: reads the URL and code off it.
    const approved = (async () => {
      const { prompt, url, code } = await devicePrompt(out);
      assert.match(prompt, /▄|█/, 'a QR code is drawn in the terminal');
      return user.approveDevice(url, code, 'dana@example.com');
    })();
    const started = Date.now();
    const code = await runAccountCommand(['connect', 'dana@example.com'], ctx);
    const done = await approved;
    assert.equal(code, 0, err.join('\n'));
    assert.match(done.html, /success|signed in|Sign-in Success/i);
    assert.ok(Date.now() - started >= 4500, 'polled no faster than the 5 s default interval');
    assert.match(out.at(-1) ?? '', /connected: dana@example.com/);
    const grant = await store.getGrant(1);
    assert.equal(grant?.kind, 'refresh_token');
    assert.ok(grant?.refreshToken);
    const intro = await op.introspect(grant.refreshToken);
    assert.equal(intro.active, true);
    assert.equal(intro.sub, 'dana@example.com');

    // grant revoke: RFC 7009 at the OP, then gone locally.
    const rc = await runGrantCommand(['revoke', 'dana@example.com'], ctx);
    assert.equal(rc, 0, err.join('\n'));
    assert.match(out.at(-1) ?? '', /removed; revoked at the provider/);
    assert.equal(await store.getGrant(1), null);
    assert.equal((await op.introspect(grant.refreshToken)).active, false);
    assert.ok((await store.listAudit()).some((e) => e.action === 'grant.revoke'));
  });

  test('account connect refuses a device sign-in by a different mailbox and stores nothing', async () => {
    const store = await fresh();
    await store.createAccount(
      { login: 'erin@example.com', upstreamUser: 'erin@example.com', provider: 'local' },
      't',
    );
    ctx.config.providers.local!.scopes = ['openid', 'email', 'offline_access'];
    const user = new FormDriver();
    const approved = (async () => {
      const { url, code } = await devicePrompt(out);
      return user.approveDevice(url, code, 'mallory@example.com');
    })();
    const rc = await runAccountCommand(['connect', 'erin@example.com'], ctx);
    await approved;
    assert.equal(rc, 1);
    assert.match(err.join('\n'), /signed in as mallory@example.com/);
    assert.equal(await store.getGrant(1), null);
  });

  test('account add --grant app-only: client credentials, proven by a token request', async () => {
    const store = await fresh();
    const rc = await runAccountCommand(
      [
        'add',
        'scanner',
        '--provider',
        'local',
        '--upstream-user',
        'scanner@example.com',
        '--grant',
        'app-only',
      ],
      ctx,
    );
    assert.equal(rc, 0, err.join('\n'));
    assert.match(out.join('\n'), /app-only grant \(client_credentials\) stored; test token obtained/);
    const a = await store.getAccountByLogin('scanner');
    assert.equal((await store.getGrant(a!.id))?.kind, 'client_credentials');
  });

  test('account link prints a sealed link to the admin server that does not reveal the account', async () => {
    const store = await fresh();
    await store.createAccount(
      { login: 'finn@example.com', upstreamUser: 'finn@example.com', provider: 'local' },
      't',
    );
    const rc = await runAccountCommand(['link', 'finn@example.com', '--hours', '1'], ctx);
    assert.equal(rc, 0, err.join('\n'));
    const link = /(https:\/\/proxy\.example\.test\/connect\/start\?link=\S+)/.exec(out.join('\n'))?.[1];
    assert.ok(link, out.join('\n'));
    assert.doesNotMatch(link, /finn/, 'the link does not reveal the account');
  });
});
