import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { CommandContext } from '../../../src/commands/context.js';
import { runGrantCommand } from '../../../src/commands/grant.js';
import { configSchema } from '../../../src/config/schema.js';
import { silentLogger } from '../../../src/log.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { Keyring } from '../../../src/store/crypto.js';
import type { SqliteGrantStore } from '../../../src/store/sqlite.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';

/** `grant import` checks a refresh token at a real oidc-provider; `grant status` exit codes. */
describe('grant import check and grant status exit codes', () => {
  let op: TestOP;
  const stores: SqliteGrantStore[] = [];
  before(async () => {
    op = await startOP();
  });
  after(async () => {
    for (const s of stores) await s.close();
    await op?.close();
  });

  const harness = async () => {
    const store = await memoryDbStore();
    stores.push(store);
    const config = configSchema.parse({
      listeners: [{ name: 'imaps', port: 0, tls: 'implicit' }],
      providers: { local: { ...opProviderConfig(op), upstream: { host: '127.0.0.1' } } },
    });
    const run = async (args: string[], stdin = '') => {
      const out: string[] = [];
      const err: string[] = [];
      const ctx: CommandContext = {
        config,
        store,
        keyring: Keyring.random('k1'),
        out: (s) => out.push(s),
        err: (s) => err.push(s),
        stdin: Readable.from([Buffer.from(stdin)]),
        log: silentLogger,
      };
      const code = await runGrantCommand(args, ctx);
      return { code, out: out.join('\n'), err: err.join('\n') };
    };
    const account = (login: string) =>
      store.createAccount({ login, upstreamUser: login, provider: 'local' }, 'test');
    return { store, config, run, account };
  };

  test('a valid refresh token is checked with one refresh; the rotated token is what gets stored', async () => {
    const h = await harness();
    const a = await h.account('gail@example.com');
    const minted = await op.mintGrant('gail@example.com');
    const before = op.tokenRequests();
    const r = await h.run(['import', 'gail@example.com'], `${minted.refresh_token}\n`);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /stored for gail@example\.com \(checked/);
    assert.equal(op.tokenRequests(), before + 1, 'one refresh');
    assert.ok(!`${r.out}${r.err}`.includes(minted.refresh_token), 'the token is never echoed');
    const g = await h.store.getGrant(a.id);
    assert.equal(g?.status, 'active');
    assert.ok(g?.refreshToken && g.refreshToken !== minted.refresh_token);
    assert.equal((await op.introspect(g.refreshToken)).active, true, 'the stored token works');
    assert.equal(
      (await op.introspect(minted.refresh_token)).active,
      false,
      'rotation ended the imported one',
    );
    assert.ok(g.accessToken && (await op.introspect(g.accessToken)).active);
  });

  test('a refresh token the provider rejects: exit 1, says invalid_grant, stores nothing, keeps the old grant', async () => {
    const h = await harness();
    const a = await h.account('hank@example.com');
    let r = await h.run(['import', 'hank@example.com'], 'not-a-refresh-token');
    assert.equal(r.code, 1);
    assert.match(
      r.err,
      /provider "local" rejected the refresh token \(invalid_grant .*nothing stored for hank/,
    );
    assert.ok(!r.err.includes('not-a-refresh-token'));
    assert.equal(await h.store.getGrant(a.id), null);

    const good = (await op.mintGrant('hank@example.com')).refresh_token;
    assert.equal((await h.run(['import', 'hank@example.com'], good)).code, 0);
    const kept = await h.store.getGrant(a.id);
    r = await h.run(['import', 'hank@example.com'], 'another-bad-token');
    assert.equal(r.code, 1);
    assert.deepEqual(await h.store.getGrant(a.id), kept);
  });

  test('provider unreachable: exit 1, says so (not invalid_grant), stores nothing; --no-check stores unchecked', async () => {
    const h = await harness();
    const a = await h.account('ivy@example.com');
    const token = (await op.mintGrant('ivy@example.com')).refresh_token;
    op.setDown(true);
    try {
      const r = await h.run(['import', 'ivy@example.com'], token);
      assert.equal(r.code, 1);
      assert.match(
        r.err,
        /could not check the refresh token at provider "local" \(token endpoint unreachable/,
      );
      assert.match(r.err, /--no-check/);
      assert.doesNotMatch(r.err, /invalid_grant/);
      assert.equal(await h.store.getGrant(a.id), null);

      const before = op.tokenRequests();
      const u = await h.run(['import', 'ivy@example.com', '--no-check'], token);
      assert.equal(u.code, 0, u.err);
      assert.doesNotMatch(u.out, /checked/);
      assert.equal(op.tokenRequests(), before, 'no request with --no-check');
      assert.equal((await h.store.getGrant(a.id))?.refreshToken, token);
    } finally {
      op.setDown(false);
    }
  });

  test('grant status exits 3 while an enabled account has no grant or needs consent, 0 when all are active', async () => {
    const h = await harness();
    await h.account('jo@example.com');
    const b = await h.account('kim@example.com');
    const importFor = async (login: string) =>
      assert.equal((await h.run(['import', login], (await op.mintGrant(login)).refresh_token)).code, 0);
    await importFor('jo@example.com');

    let r = await h.run(['status']);
    assert.equal(r.code, 3, 'kim has no grant');
    assert.match(r.out, /kim@example\.com\s+-\s+none/);
    assert.equal((await h.run(['status', 'jo@example.com'])).code, 0, 'only jo is asked about');
    await importFor('kim@example.com');
    assert.equal((await h.run(['status'])).code, 0);

    // Consent withdrawn at the provider: the next login's refresh marks the grant needs_consent.
    await op.revoke((await h.store.getGrant(b.id))!.refreshToken!);
    const broker = new OAuthTokenBroker({
      store: h.store,
      providers: createProviderRegistry(h.config.providers),
      tokens: h.config.tokens,
      now: () => Date.now() + 2 * 3600_000,
    });
    await assert.rejects(broker.getAccessToken(b), { reason: 'needs_consent' });
    r = await h.run(['status']);
    assert.equal(r.code, 3);
    assert.match(r.out, /kim@example\.com\s+refresh_token\s+needs_consent/);
    assert.equal((await h.run(['status', 'kim@example.com'])).code, 3);
    assert.equal((await h.run(['status', 'jo@example.com'])).code, 0);

    // A disabled account is off on purpose and does not count.
    await h.store.setAccountStatus(b.id, 'disabled', 'test');
    assert.equal((await h.run(['status'])).code, 0);
    assert.equal((await h.run(['status', 'ghost'])).code, 1, 'errors stay 1');
    assert.match((await h.run(['status', '--help'])).out, /3 when one has no grant/);
  });
});
