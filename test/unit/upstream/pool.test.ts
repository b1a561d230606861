import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import type { UpstreamConnection, UpstreamConnector, UpstreamTarget } from '../../../src/core/upstream.js';
import { ProxyError } from '../../../src/errors.js';
import { WarmPool } from '../../../src/net/pool.js';

// A scripted inner connector: the pool's bookkeeping (reuse, staleness, bounds, expiry) is what
// is under test here; real dials through the pool run in the e2e and bench suites.

interface FakeConn extends UpstreamConnection {
  readonly id: number;
  stale: boolean;
  /** Looks reusable but the server closed it: AUTHENTICATE fails with `closed`. */
  closedByServer: boolean;
  destroyed: boolean;
  users: string[];
  whenDestroyed: Promise<void>;
}

function fakeConnector() {
  let seq = 0;
  const made: FakeConn[] = [];
  let calls = 0;
  let failing: (call: number) => boolean = () => false;
  const connector: UpstreamConnector = {
    async connect() {
      if (failing(++calls)) {
        throw new ProxyError('upstream_unavailable', 'refused', { detail: 'connect_refused' });
      }
      let onDestroy!: () => void;
      const conn: FakeConn = {
        id: ++seq,
        stale: false,
        closedByServer: false,
        destroyed: false,
        users: [],
        whenDestroyed: new Promise<void>((r) => {
          onDestroy = r;
        }),
        capabilities: ['IMAP4rev1', 'AUTH=XOAUTH2'],
        get reusable() {
          return !this.stale && !this.destroyed;
        },
        async authenticate(user) {
          if (conn.closedByServer)
            throw new ProxyError('upstream_unavailable', 'upstream closed', { detail: 'closed' });
          conn.users.push(user);
          return { socket: new PassThrough(), capabilities: ['IMAP4rev1'], buffered: Buffer.alloc(0) };
        },
        destroy() {
          conn.destroyed = true;
          onDestroy();
        },
        recycle() {
          conn.destroy();
        },
      };
      made.push(conn);
      return conn;
    },
  };
  return {
    connector,
    made,
    /** Dials numbered (from 1) for which `fail` is true are refused. */
    failWhen: (fail: (call: number) => boolean) => {
      failing = fail;
    },
  };
}

const target = (port = 993): UpstreamTarget => ({
  host: 'imap.example.com',
  port,
  tls: 'implicit',
  mechanism: 'xoauth2',
  connect_timeout_seconds: 10,
  auth_timeout_seconds: 20,
  post_login_probe: false,
});
const labels = { provider: 'p' };
/** Whether each connection handed out came pre-dialled (the pool counts its warm hands-out). */
const warmth = new WeakMap<UpstreamConnection, boolean>();
async function connect(pool: WarmPool, t: UpstreamTarget, l = labels): Promise<UpstreamConnection> {
  const before = pool.warmHits;
  const c = await pool.connect(t, l);
  warmth.set(c, pool.warmHits > before);
  return c;
}
const isWarm = (c: UpstreamConnection) => warmth.get(c) === true;
/** A whole login: the pool refills once the login's exchange is over, never during it. */
async function login(pool: WarmPool, t: UpstreamTarget, l = labels): Promise<UpstreamConnection> {
  const c = await connect(pool, t, l);
  await c.authenticate('someone', 't');
  return c;
}
/** One event-loop turn: lets the pool's background dials (resolved promises) land. */
const turn = () => new Promise<void>((r) => setImmediate(r));

test('first login dials directly and warms the pool once it is over; the next login gets a pre-dialled connection', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  const first = await connect(pool, target(), labels);
  assert.equal(isWarm(first), false, 'nothing was warm yet');
  await turn();
  assert.equal(
    f.made.length,
    1,
    'no background dial while the login runs (its TLS handshakes would slow it)',
  );
  await first.authenticate('alice', 't');
  await turn();
  assert.equal(pool.idleCount(target()), 2);
  const second = await connect(pool, target(), labels);
  assert.equal(isWarm(second), true);
  await turn();
  assert.equal(
    f.made.length,
    3,
    'one direct dial, two warm ones; the one taken is replaced only after its login',
  );
  await second.authenticate('bob', 't');
  await turn();
  assert.equal(f.made.length, 4);
  assert.equal(pool.idleCount(target()), 2, 'topped up again after the login');
});

test('no cross-account reuse: a connection handed out is never handed out again', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  await login(pool, target(), labels);
  await turn();
  const users = ['alice', 'bob', 'carol', 'dave', 'erin'];
  for (const user of users) {
    const c = await connect(pool, target(), labels);
    assert.equal(isWarm(c), true);
    await c.authenticate(user, 't');
    await turn();
  }
  assert.deepEqual(
    f.made
      .flatMap((m) => m.users)
      .filter((u) => u !== 'someone')
      .sort(),
    users,
    'each login authenticated exactly once',
  );
  for (const m of f.made)
    assert.ok(m.users.length <= 1, `connection ${m.id} authenticated ${m.users.join(',')}`);
});

test('a stale warm connection (closed by the server while idle) is dropped, not handed out', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  await login(pool, target(), labels);
  await turn();
  const [w1, w2] = f.made.slice(1);
  assert.ok(w1 && w2);
  w1.stale = true;
  w2.stale = true;
  const c = await connect(pool, target(), labels);
  assert.equal(isWarm(c), false, 'both warm ones were stale: a direct dial instead');
  assert.equal(w1.destroyed && w2.destroyed, true, 'stale connections are closed');
  assert.equal(c.reusable, true);
});

test('bounded: concurrent logins never grow the pool past its size', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 3 });
  t.after(() => pool.close());
  await Promise.all(Array.from({ length: 20 }, () => login(pool, target(), labels)));
  await turn();
  assert.equal(pool.idleCount(target()), 3);
  assert.equal(f.made.length, 23, '20 direct dials plus exactly 3 warm ones');
});

test('bounded over all targets: many per-account upstreams never exceed maxTotal', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2, maxTotal: 3 });
  t.after(() => pool.close());
  for (const port of [1001, 1002, 1003, 1004]) await login(pool, target(port), labels);
  await turn();
  const idle = [1001, 1002, 1003, 1004].reduce((n, port) => n + pool.idleCount(target(port)), 0);
  assert.equal(idle, 3);
  assert.equal(f.made.length, 4 + 3);
});

test('targets are pooled separately; size 0 turns the pool off', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 1 });
  t.after(() => pool.close());
  await login(pool, target(993), labels);
  await turn();
  const other = await connect(pool, target(1993), labels);
  assert.equal(isWarm(other), false, 'a connection to another upstream is never used');
  const off = new WarmPool(f.connector, { size: 0 });
  const before = f.made.length;
  await connect(off, target(), labels);
  await turn();
  assert.equal(f.made.length, before + 1);
  assert.equal(off.idleCount(target()), 0);
});

test('an unused warm connection is closed after idleMs and not replaced without logins', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 1, idleMs: 20 });
  t.after(() => pool.close());
  await login(pool, target(), labels);
  await turn();
  const warm = f.made[1];
  assert.ok(warm);
  // The pool's idle timer is unref'd (real sockets keep a server alive); this ref'd watchdog does here.
  const watchdog = setTimeout(() => assert.fail('idle connection was never closed'), 5000);
  await warm.whenDestroyed;
  clearTimeout(watchdog);
  assert.equal(pool.idleCount(target()), 0);
  assert.equal(f.made.length, 2, 'no refill while nobody logs in');
});

test('a down upstream gets no background dials; a failing refill backs off', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  f.failWhen(() => true);
  await assert.rejects(connect(pool, target(), labels));
  await turn();
  assert.equal(pool.idleCount(target()), 0);
  // Login dial 2 works, its two refills (3, 4) fail: no refill again during the back-off.
  f.failWhen((call) => call > 2);
  await login(pool, target(), labels);
  await turn();
  assert.equal(pool.idleCount(target()), 0);
  f.failWhen(() => false);
  const before = f.made.length;
  await login(pool, target(), labels);
  await turn();
  assert.equal(f.made.length, before + 1, 'only the login dial itself, no refill during back-off');
});

test('close() closes idle connections and later connects bypass the pool', async () => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  await login(pool, target(), labels);
  await turn();
  pool.close();
  const idle = f.made.slice(1);
  assert.equal(idle.length, 2);
  assert.ok(idle.every((m) => m.destroyed));
  const c = await connect(pool, target(), labels);
  assert.equal(isWarm(c), false);
});

/** A pool of size 1 after one login: the direct dial, then one pre-dialled connection waiting. */
async function oneWarm(t: { after: (fn: () => void) => void }) {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 1 });
  t.after(() => pool.close());
  await login(pool, target());
  await turn();
  const [, warm] = f.made;
  assert.ok(warm);
  return { f, pool, warm };
}

test('a warm connection the server closed while it waited: one fresh dial inside authenticate, same token', async (t) => {
  const { f, pool, warm } = await oneWarm(t);
  warm.closedByServer = true;
  const c = await connect(pool, target());
  assert.equal(isWarm(c), true);
  const made = f.made.length;
  await c.authenticate('alice', 't');
  assert.equal(warm.destroyed, true, 'the dead warm connection is closed');
  assert.ok(f.made.length > made, 'a fresh dial replaced it');
  assert.deepEqual(
    f.made.flatMap((m) => m.users),
    ['someone', 'alice'],
  );
});

test('a server answer on a warm connection is not retried on a fresh dial', async (t) => {
  const { f, pool, warm } = await oneWarm(t);
  warm.authenticate = async () => {
    throw new ProxyError('upstream_unavailable', 'NO [UNAVAILABLE]', { detail: 'temporary' });
  };
  const c = await connect(pool, target());
  const made = f.made.length;
  await assert.rejects(c.authenticate('alice', 't'), { detail: 'temporary' });
  await turn();
  assert.equal(f.made.length, made + 1, 'no retry dial, only the refill of the one taken');
  assert.deepEqual(
    f.made.flatMap((m) => m.users),
    ['someone'],
    'the refused login was not tried again elsewhere',
  );
});

test('a connection its login never used (the token failed) goes back into the pool', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  await login(pool, target());
  await turn();
  assert.equal(pool.idleCount(target()), 2);
  const c = await connect(pool, target());
  await turn();
  assert.equal(pool.idleCount(target()), 1, 'not replaced while its login runs');
  const made = f.made.length;
  c.recycle();
  await turn();
  assert.equal(pool.idleCount(target()), 2, 'given back: the pool is full again');
  assert.equal(f.made.length, made, 'so nothing is dialled');
  const d = await connect(pool, target());
  assert.equal(isWarm(d), true);
  d.recycle();
  await turn();
  assert.equal(pool.idleCount(target()), 2, 'the pool stays bounded');
  assert.equal(f.made.length, made, 'still nothing dialled');
});

test('a warm connection whose upstream froze (AUTH timed out): the others waiting for it are dropped, no refill for a while', async (t) => {
  const f = fakeConnector();
  const pool = new WarmPool(f.connector, { size: 2 });
  t.after(() => pool.close());
  await login(pool, target());
  await turn();
  assert.equal(pool.idleCount(target()), 2);
  const c = await connect(pool, target());
  assert.equal(isWarm(c), true);
  const frozen = f.made.find((m) => !m.destroyed && m.users.length === 0 && pool.idleCount(target()) > 0);
  assert.ok(frozen);
  for (const m of f.made) {
    m.authenticate = async () => {
      throw new ProxyError('timeout', 'no answer', { detail: 'response_timeout' });
    };
  }
  await assert.rejects(c.authenticate('alice', 't'), { reason: 'timeout' });
  await turn();
  assert.equal(pool.idleCount(target()), 0, 'the other pre-dialled connection is not handed out');
  const made = f.made.length;
  const next = await connect(pool, target());
  assert.equal(isWarm(next), false, 'the next login dials fresh');
  next.destroy();
  await turn();
  assert.equal(f.made.length, made + 1, 'and no background refill during the back-off');
});
