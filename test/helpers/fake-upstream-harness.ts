import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, test } from 'node:test';
import { resolveUpstream } from '../../src/config/presets.js';
import type { Protocol } from '../../src/config/schema.js';
import type {
  AuthenticatedUpstream,
  UpstreamConnection,
  UpstreamConnector,
  UpstreamTarget,
} from '../../src/core/upstream.js';
import { isProxyError, type ProxyError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { createMetrics } from '../../src/metrics.js';
import type { ConnectorDeps } from '../../src/net/connector.js';
import { xoauth2Blob } from '../../src/sasl/client.js';
import { until, withDeadline } from './deadline.js';
import type { LineServer } from './fake-line-server.js';

/**
 * One protocol's upstream connector against its scripted fake (IMAP, SMTP, POP3): the fakes a
 * test starts and closes, targets for them, the connector's metrics and its captured logs.
 */

export const USER = 'alice@example.com';
/** The token every fake accepts unless a test says otherwise. */
export const GOOD = 'good-token';

/** What the harness needs of a scripted fake upstream. */
export interface ScriptedUpstream extends LineServer {
  options: { tls: 'implicit' | 'starttls' };
}

/** The connector's counters as the metrics endpoint shows them (undefined: no such series). */
export interface UpstreamCounts {
  auths(result: string, mechanism?: string): string | undefined;
  connects(result: string): string | undefined;
  connectDurations(): string | undefined;
}

export interface ConnectorHarness<F, O> {
  connector: UpstreamConnector;
  labels: { provider: string };
  /** A fake accepting GOOD (unless `o` says otherwise), closed after the suite. */
  fake(o?: Partial<O>): Promise<F>;
  /** The fake as an upstream target: 5 s timeouts unless `over` says otherwise. */
  target(f: F, over?: Record<string, unknown>): UpstreamTarget;
  /** A fake (as `fake` starts it) and a connection to it. */
  connected(o?: Partial<O>): Promise<{ f: F; conn: UpstreamConnection }>;
  /** A fake made with `o` and a connection to it, after AUTH with `token` failed as `expected`. */
  refused(
    o: Partial<O>,
    token: string,
    expected: { reason: string; detail?: string },
  ): Promise<{ f: F; conn: UpstreamConnection }>;
  /** Asserts the connection is still usable after a refusal: a GOOD AUTH succeeds on it, no new dial. */
  assertRetriedOnSameConnection(f: F, conn: UpstreamConnection): Promise<void>;
  /** Asserts the hand-over: login capabilities, nothing buffered, socket paused with no reader, connection spent. */
  assertHandedOver(conn: UpstreamConnection, up: AuthenticatedUpstream): void;
  /** Sends `line` on the handed-over socket, now read raw, and returns the first bytes back. */
  rawCommand(up: AuthenticatedUpstream, line: string): Promise<string>;
  /** The ProxyError that authenticating with `token` ends in. */
  authError(conn: UpstreamConnection, token: string): Promise<ProxyError>;
  counts(): Promise<UpstreamCounts>;
  /** Logs were written, and none of them holds GOOD, a refused token or GOOD's blob. */
  assertLogsClean(): void;
  /** Registers the tests every connector passes alike, on fakes made with `shapes`. */
  sharedTests(shapes: SharedShapes<O>): void;
}

const series = (text: string, name: string, labels: string) =>
  new RegExp(`${name}\\{${labels}\\} (\\d+)`).exec(text)?.[1];

/** The harness for `protocol`'s connector and fake, in the current suite (it closes the fakes after it). */
export function connectorHarness<F extends ScriptedUpstream, O extends { accept: Set<string> | 'any' }>(
  protocol: Protocol,
  createConnector: (deps: ConnectorDeps) => UpstreamConnector,
  startFake: (o: Partial<O>) => Promise<F>,
  /** Upstream settings every target carries besides address, TLS and timeouts. */
  settings: Record<string, unknown> = {},
): ConnectorHarness<F, O> {
  const fakes: F[] = [];
  let logText = '';
  const logStream = new PassThrough();
  logStream.on('data', (d: Buffer) => {
    logText += d.toString();
  });
  const metrics = createMetrics({ defaults: false });
  const connector = createConnector({
    metrics,
    log: createLogger({ level: 'trace', destination: logStream }),
  });
  after(async () => {
    await Promise.all(fakes.map((f) => f.close()));
  });
  const own = `protocol="${protocol}",provider="fake"`;

  const labels = { provider: 'fake' };
  const fake = async (o: Partial<O> = {}) => {
    const f = await startFake({ accept: new Set([GOOD]), ...o });
    fakes.push(f);
    return f;
  };
  const target = (f: F, over: Record<string, unknown> = {}) =>
    resolveUpstream(protocol, {
      host: f.host,
      port: f.port,
      tls: f.options.tls,
      ca_file: f.caFile,
      ...settings,
      connect_timeout_seconds: 5,
      auth_timeout_seconds: 5,
      ...over,
    });

  const connected = async (o?: Partial<O>) => {
    const f = await fake(o);
    return { f, conn: await connector.connect(target(f), labels) };
  };

  const harness: ConnectorHarness<F, O> = {
    connector,
    labels,
    fake,
    target,
    connected,
    async refused(o, token, expected) {
      const r = await connected(o);
      await assert.rejects(r.conn.authenticate(USER, token), expected);
      return r;
    },
    async assertRetriedOnSameConnection(f, conn) {
      assert.equal(conn.reusable, true);
      const up = await conn.authenticate(USER, GOOD);
      assert.equal(f.connections, 1);
      up.socket.destroy();
    },
    assertHandedOver(conn, up) {
      assert.deepEqual(up.capabilities, conn.capabilities);
      assert.equal(up.buffered.length, 0);
      assert.equal(up.socket.isPaused(), true);
      assert.equal(up.socket.listenerCount('data'), 0);
      assert.equal(conn.reusable, false);
    },
    rawCommand(up, line) {
      up.socket.write(`${line}\r\n`);
      up.socket.resume();
      return withDeadline(
        new Promise<string>((r) => up.socket.once('data', (d: Buffer) => r(d.toString()))),
        5000,
        `the reply to ${line}`,
      );
    },
    async authError(conn, token) {
      const err = await conn.authenticate(USER, token).then(
        () => assert.fail('must not succeed'),
        (e: unknown) => e,
      );
      assert.ok(isProxyError(err));
      return err;
    },
    async counts() {
      const text = await metrics.registry.metrics();
      return {
        auths: (result, mech = 'xoauth2') =>
          series(text, 'imap_proxy_upstream_auths_total', `${own},mechanism="${mech}",result="${result}"`),
        connects: (result) => series(text, 'imap_proxy_upstream_connects_total', `${own},result="${result}"`),
        connectDurations: () => series(text, 'imap_proxy_upstream_connect_duration_seconds_count', own),
      };
    },
    assertLogsClean() {
      assert.ok(logText.includes('upstream auth failed'), 'logs were captured');
      for (const secret of [GOOD, 'stale-token', xoauth2Blob(USER, GOOD)])
        assert.ok(!logText.includes(secret), secret);
    },
    sharedTests: (shapes) => sharedConnectorTests(harness, shapes),
  };
  return harness;
}

/** The fake's options for each case the shared tests script. */
export interface SharedShapes<O> {
  /** Drops the connection mid-AUTH. */
  close: Partial<O>;
  /** Never answers AUTH. */
  hang: Partial<O>;
  /** Never greets. */
  silent: Partial<O>;
  /** Refuses a token at once and keeps the connection (Microsoft's way), and its name. */
  refuse?: { what: string; options: Partial<O> };
  /** Refuses OAUTHBEARER with a JSON challenge the client must answer (Gmail's way). */
  bearerChallenge?: Partial<O>;
  /** A reply the fake sends unasked on an idle connection (a server's idle timeout), and its name. */
  unsolicited?: { what: string; bytes: string };
}

/** The shapes the SMTP and POP3 fakes script by the same options. */
export const LINE_FAKE_SHAPES: {
  close: { reject: 'close' };
  hang: { reject: 'hang' };
  silent: { greeting: 'never' };
  bearerChallenge: { reject: 'gmail'; mechanisms: string[] };
} = {
  close: { reject: 'close' },
  hang: { reject: 'hang' },
  silent: { greeting: 'never' },
  bearerChallenge: { reject: 'gmail', mechanisms: ['OAUTHBEARER'] },
};

/**
 * What every connector does alike, as tests: one retry on the connection a refused token left,
 * the OAUTHBEARER challenge answered, a close mid-AUTH, a frozen server, a server that never
 * greets, an abort while connecting, an unsolicited reply while idle.
 */
function sharedConnectorTests<F extends ScriptedUpstream, O extends { accept: Set<string> | 'any' }>(
  h: ConnectorHarness<F, O>,
  shapes: SharedShapes<O>,
): void {
  const { connector, labels } = h;

  const refuse = shapes.refuse;
  if (refuse)
    test(`${refuse.what} → upstream_rejected; the same connection takes one more AUTH`, async () => {
      const { f, conn } = await h.refused(refuse.options, 'stale-token', {
        reason: 'upstream_rejected',
        detail: 'no',
      });
      await h.assertRetriedOnSameConnection(f, conn);
      assert.deepEqual(f.tokens, ['stale-token', GOOD]);
    });

  const bearerChallenge = shapes.bearerChallenge;
  if (bearerChallenge)
    test('OAUTHBEARER failure challenge is answered with AQ== (a single 0x01)', async () => {
      const { f, conn } = await h.refused(bearerChallenge, 'bad', {
        reason: 'upstream_rejected',
        detail: 'json_invalid_token',
      });
      assert.equal(f.received.at(-1), 'AQ==');
      conn.destroy();
    });

  test('upstream closes mid-AUTH → upstream_unavailable, not reusable', async () => {
    const { conn } = await h.refused(shapes.close, 'any', { reason: 'upstream_unavailable' });
    assert.equal(conn.reusable, false);
    await assert.rejects(conn.authenticate(USER, GOOD), {
      reason: 'upstream_unavailable',
      detail: 'not_reusable',
    });
  });

  test('a frozen upstream: AUTH times out within auth_timeout_seconds', async () => {
    const f = await h.fake(shapes.hang);
    const conn = await connector.connect(h.target(f, { auth_timeout_seconds: 0.3 }), labels);
    const t0 = Date.now();
    await assert.rejects(conn.authenticate(USER, 'any'), { reason: 'timeout', detail: 'response_timeout' });
    assert.ok(Date.now() - t0 < 2000);
    assert.equal(conn.reusable, false);
  });

  test('a server that never greets: connect times out within connect_timeout_seconds', async () => {
    const f = await h.fake(shapes.silent);
    const t0 = Date.now();
    await assert.rejects(connector.connect(h.target(f, { connect_timeout_seconds: 0.3 }), labels), {
      reason: 'timeout',
    });
    assert.ok(Date.now() - t0 < 2000);
  });

  test('an abort while connecting destroys the socket and is counted as aborted', async () => {
    const f = await h.fake(shapes.silent);
    const ac = new AbortController();
    const p = connector.connect(h.target(f), labels, ac.signal);
    await until(() => f.connections === 1, 5000, 'the dial to arrive');
    ac.abort();
    await assert.rejects(withDeadline(p, 2000, 'the aborted connect'), {
      reason: 'timeout',
      detail: 'aborted',
    });
  });

  const unsolicited = shapes.unsolicited;
  if (unsolicited)
    test(`an unsolicited ${unsolicited.what} on an idle connection makes it unusable`, async () => {
      const { f, conn } = await h.connected();
      assert.equal(conn.reusable, true);
      f.sendAll(unsolicited.bytes);
      await until(() => !conn.reusable, 5000, `the ${unsolicited.what} to arrive`);
      await assert.rejects(conn.authenticate(USER, GOOD), { detail: 'not_reusable' });
      conn.destroy();
    });
}
