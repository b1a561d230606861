import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { CredentialChecker } from '../../../src/accounts/types.js';
import { parseConfig } from '../../../src/config/load.js';
import { upstreamFor } from '../../../src/config/presets.js';
import { UpstreamCapabilities } from '../../../src/core/capabilities.js';
import { hasScope, LoginPipeline } from '../../../src/core/pipeline.js';
import { SessionRegistry } from '../../../src/core/sessions.js';
import type { ClientInfo } from '../../../src/core/types.js';
import type { UpstreamConnection, UpstreamConnector } from '../../../src/core/upstream.js';
import { ProxyError } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import type { TokenBroker } from '../../../src/oauth/types.js';
import type { AccountRecord } from '../../../src/store/types.js';

// Test doubles for the orchestration only; the real components are exercised end to end in
// test/integration. These record calls so the order of events can be asserted.

const { config } = parseConfig(
  `
encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners: [{ name: a, port: 0, tls: none }]
limits: { max_sessions_per_account: 2 }
providers:
  p: { issuer: "https://127.0.0.1:1", client_id: c, client_secret: s, upstream: { host: 127.0.0.1, port: 1 } }
`,
  '/tmp/c.yaml',
  {},
);

const account: AccountRecord = {
  id: 7,
  logins: ['alice'],
  upstreamUser: 'alice@example.com',
  provider: 'p',
  status: 'active',
  maxSessions: null,
  upstreamOverride: null,
  createdAt: 0,
  lastLoginAt: null,
};

const client: ClientInfo = {
  cid: 'c1',
  address: '192.0.2.1',
  port: 1,
  listener: 'a',
  secure: true,
  log: silentLogger,
};

function harness(opts: {
  accept: (token: string) => boolean;
  tokenError?: ProxyError;
  /** The token answer waits until this promise settles (to race it against the dial). */
  tokenGate?: Promise<void>;
  /** The dial waits until its signal aborts (or this promise settles). */
  dialGate?: Promise<void>;
  reusable?: boolean;
  /** Scopes the token endpoint granted (absent: it did not say). */
  scope?: string;
  config?: typeof config;
  publicUrl?: string;
}) {
  const events: string[] = [];
  const capabilities = new UpstreamCapabilities();
  let n = 0;
  const credentials: CredentialChecker = {
    async verify(login, password) {
      return login === 'alice' && password === 'pw'
        ? { ok: true, account }
        : { ok: false, reason: 'bad_credentials' };
    },
  };
  const broker: TokenBroker = {
    async getAccessToken(_a, o) {
      events.push(o?.forceRefresh ? 'token:forced' : 'token');
      await opts.tokenGate;
      if (opts.tokenError) throw opts.tokenError;
      return { token: `t${++n}`, expiresAt: Date.now() + 3600_000, scope: opts.scope };
    },
    reportRejected(_a, t) {
      events.push(`rejected:${t}`);
    },
  };
  const connector: UpstreamConnector = {
    async connect(_t, _l, signal) {
      events.push('connect');
      if (opts.dialGate) {
        await Promise.race([
          opts.dialGate,
          new Promise<void>((_, reject) =>
            signal?.addEventListener('abort', () => {
              events.push('dial:aborted');
              reject(new ProxyError('timeout', 'aborted', { detail: 'aborted' }));
            }),
          ),
        ]);
      }
      const conn: UpstreamConnection = {
        capabilities: ['IMAP4rev1'],
        reusable: opts.reusable ?? true,
        async authenticate(user, token) {
          events.push(`auth:${user}:${token}`);
          if (!opts.accept(token)) throw new ProxyError('upstream_rejected', 'no');
          return {
            socket: new PassThrough(),
            capabilities: ['IMAP4rev1', 'IDLE'],
            buffered: Buffer.alloc(0),
          };
        },
        destroy() {
          events.push('destroy');
        },
        recycle() {
          events.push('recycle');
        },
      };
      return conn;
    },
  };
  return {
    events,
    pipeline: new LoginPipeline({
      config: opts.config ?? config,
      credentials,
      broker,
      connectors: new Map([['imap', connector]]),
      sessions: new SessionRegistry(),
      capabilities,
      publicUrl: opts.publicUrl,
    }),
    capabilities,
  };
}

const req = (password = 'pw') => ({
  protocol: 'imap' as const,
  login: 'alice',
  password,
  mechanism: 'LOGIN',
  client,
});

test('happy path: one token, one connection, upstream user from the account', async () => {
  const h = harness({ accept: () => true });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  assert.equal(out.ok, true);
  assert.deepEqual(h.events.sort(), ['auth:alice@example.com:t1', 'connect', 'token']);
});

test('upstream rejects once: report, forced refresh, retry on the same connection', async () => {
  const h = harness({ accept: (t) => t === 't2' });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  assert.equal(out.ok, true);
  assert.deepEqual(h.events.slice(2), [
    'auth:alice@example.com:t1',
    'rejected:t1',
    'token:forced',
    'auth:alice@example.com:t2',
  ]);
});

test('upstream rejects twice: AUTHORIZATIONFAILED-class reason, connection destroyed, slot freed', async () => {
  const h = harness({ accept: () => false, reusable: false });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  assert.deepEqual(out, { ok: false, reason: 'upstream_rejected', account: 'alice' });
  assert.equal(
    h.events.filter((e) => e === 'connect').length,
    2,
    'a non-reusable connection is redialled once',
  );
  assert.equal(h.events.filter((e) => e === 'destroy').length, 2);
  assert.equal(h.pipeline.sessions.count(7), 0);
});

test('token failure gives the parallel upstream connection back unused and carries the client text', async () => {
  const h = harness({
    accept: () => true,
    tokenError: new ProxyError('needs_consent', 'invalid_grant', {
      clientText: 'reconnect at https://x/connect',
    }),
  });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  assert.deepEqual(out, {
    ok: false,
    reason: 'needs_consent',
    clientText: 'reconnect at https://x/connect',
    account: 'alice',
  });
  assert.ok(h.events.includes('recycle'), 'the unused connection goes back (a pool keeps it)');
  assert.ok(!h.events.includes('destroy'));
  assert.ok(!h.events.some((e) => e.startsWith('auth:')));
});

test('a token that fails while the dial is still running stops the dial', async () => {
  let openDial!: () => void;
  const h = harness({
    accept: () => true,
    tokenError: new ProxyError('needs_consent', 'invalid_grant'),
    dialGate: new Promise<void>((r) => {
      openDial = r;
    }),
  });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  openDial();
  assert.equal(out.ok, false);
  assert.ok(h.events.includes('dial:aborted'), `events: ${h.events.join(' ')}`);
});

test('bad credentials never reach the broker or upstream', async () => {
  const h = harness({ accept: () => true });
  assert.deepEqual(await h.pipeline.login(req('nope'), new AbortController().signal), {
    ok: false,
    reason: 'bad_credentials',
  });
  assert.deepEqual(h.events, []);
});

test('per-account session cap: the third concurrent session gets session_limit until one is released', async () => {
  const h = harness({ accept: () => true });
  const s = new AbortController().signal;
  const a = await h.pipeline.login(req(), s);
  const b = await h.pipeline.login(req(), s);
  assert.equal(a.ok && b.ok, true);
  assert.deepEqual(await h.pipeline.login(req(), s), {
    ok: false,
    reason: 'session_limit',
    account: 'alice',
  });
  if (a.ok) {
    a.release();
    a.release(); // releasing twice frees one slot only
  }
  assert.equal((await h.pipeline.login(req(), s)).ok, true);
  assert.deepEqual(await h.pipeline.login(req(), s), {
    ok: false,
    reason: 'session_limit',
    account: 'alice',
  });
});

const scoped = parseConfig(
  `
encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners: [{ name: a, port: 0, tls: none }]
providers:
  p: { issuer: "https://127.0.0.1:1", client_id: c, client_secret: s, upstream: { host: 127.0.0.1, port: 1, required_scope: "https://outlook.office.com/IMAP.AccessAsUser.All" } }
`,
  '/tmp/c.yaml',
  {},
).config;

test('a token granted without the protocol scope: scope_missing with where to reconnect, before the token is used', async () => {
  const h = harness({
    accept: () => true,
    config: scoped,
    scope: 'openid offline_access https://outlook.office.com/SMTP.Send',
    publicUrl: 'https://proxy.example.test/',
  });
  const out = await h.pipeline.login(req(), new AbortController().signal);
  assert.equal(out.ok, false);
  assert.equal(!out.ok && out.reason, 'scope_missing');
  assert.match(
    (!out.ok && out.clientText) || '',
    /^Reconnect the mailbox at https:\/\/proxy\.example\.test\/connect to allow this \(IMAP\.AccessAsUser\.All\)$/,
  );
  assert.ok(!h.events.some((e) => e.startsWith('auth:')), 'the token never reaches the upstream');
  assert.ok(h.events.includes('recycle'), 'the unused connection goes back');
  assert.equal(h.pipeline.sessions.count(7), 0);
});

test('a token with the scope (full or short form), or one whose response named no scopes, logs in', async () => {
  for (const scope of [
    'https://outlook.office.com/IMAP.AccessAsUser.All offline_access',
    'IMAP.AccessAsUser.All',
    undefined,
  ]) {
    const h = harness({ accept: () => true, config: scoped, ...(scope === undefined ? {} : { scope }) });
    const out = await h.pipeline.login(req(), new AbortController().signal);
    assert.equal(out.ok, true, String(scope));
  }
});

test('hasScope compares case-insensitively and by the last path segment, but never matches an empty one', () => {
  assert.equal(
    hasScope('https://outlook.office.com/smtp.send', 'https://outlook.office.com/SMTP.Send'),
    true,
  );
  assert.equal(hasScope('SMTP.Send offline_access', 'https://outlook.office.com/SMTP.Send'), true);
  assert.equal(
    hasScope('https://outlook.office.com/IMAP.AccessAsUser.All', 'https://outlook.office.com/SMTP.Send'),
    false,
  );
  assert.equal(hasScope('https://mail.google.com/', 'https://mail.google.com/'), true);
  assert.equal(hasScope('https://www.googleapis.com/ openid', 'https://mail.google.com/'), false);
});

test('an upstream lacking a feature the front door already promised is refused before its token is used, and learned', async () => {
  const h = harness({ accept: () => true });
  const out = await h.pipeline.login(
    { ...req(), upstreamKeeps: (caps) => caps.includes('CHUNKING') },
    new AbortController().signal,
  );
  assert.equal(out.ok, false);
  assert.equal(!out.ok && out.reason, 'upstream_unavailable');
  assert.ok(!h.events.some((e) => e.startsWith('auth:')));
  assert.ok(h.events.includes('recycle'));
  assert.deepEqual(h.capabilities.get('imap', upstreamFor(config.providers.p!, 'imap')), ['IMAP4rev1']);
  const ok = await h.pipeline.login(
    { ...req(), upstreamKeeps: (caps) => caps.includes('IMAP4rev1') },
    new AbortController().signal,
  );
  assert.equal(ok.ok, true);
});
