import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { ListenerConfig } from '../../../src/config/schema.js';
import { LoginRunner } from '../../../src/core/login-runner.js';
import type { LoginOutcome, LoginRequest } from '../../../src/core/types.js';
import type { FailureReason } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import { createMetrics, type Metrics } from '../../../src/metrics.js';
import type { PreauthGate } from '../../../src/net/gate.js';
import { createListener, type Listener } from '../../../src/net/listener.js';
import { ensureSelfSigned } from '../../../src/net/selfsigned.js';
import type { Tarpit } from '../../../src/net/tarpit.js';
import { imapFrontDoor } from '../../../src/protocols/imap/index.js';
import { DEFAULT_LIMITS, type WireLimits } from '../../../src/protocols/imap/limits.js';
import { pop3FrontDoor } from '../../../src/protocols/pop3/index.js';
import { smtpFrontDoor } from '../../../src/protocols/smtp/index.js';
import { until } from '../../helpers/deadline.js';
import { RawImapClient } from '../../helpers/imap-client.js';

let pems: { cert: Buffer; key: Buffer; certFile: string } | undefined;
const certDir = mkdtempSync(join(tmpdir(), 'iop-fd-'));
process.on('exit', () => rmSync(certDir, { recursive: true, force: true }));

export async function testPems(): Promise<{ cert: Buffer; key: Buffer; certFile: string }> {
  if (!pems) {
    const pair = await ensureSelfSigned(certDir);
    pems = { cert: readFileSync(pair.certFile), key: readFileSync(pair.keyFile), certFile: pair.certFile };
  }
  return pems;
}

/**
 * A stand-in for the authenticated upstream: a loopback TCP server that records every byte
 * it receives and either echoes it back (tests check order end to end) or, in 'imap' mode,
 * answers each tagged line `<tag> OK done` (real clients finish their session).
 */
export class EchoUpstream {
  readonly received: Buffer[] = [];
  private server: Server;
  private sockets = new Set<Socket>();
  port = 0;

  constructor(mode: 'echo' | 'imap' = 'echo') {
    this.server = createServer((s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      let pending = '';
      s.on('data', (d: Buffer) => {
        this.received.push(d);
        if (mode === 'echo') return void s.write(d);
        pending += d.toString('latin1');
        for (let lf = pending.indexOf('\n'); lf !== -1; lf = pending.indexOf('\n')) {
          const [tag, cmd] = pending.slice(0, lf).trim().split(' ');
          pending = pending.slice(lf + 1);
          if (cmd?.toUpperCase() === 'LOGOUT') s.end(`* BYE bye\r\n${tag} OK done\r\n`);
          else s.write(`${tag} OK done\r\n`);
        }
      });
      s.on('error', () => {});
    });
  }

  async start(): Promise<void> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as AddressInfo).port;
  }

  text(): string {
    return Buffer.concat(this.received).toString('latin1');
  }

  get open(): number {
    return this.sockets.size;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

export type Decide = (
  req: LoginRequest,
  signal: AbortSignal,
) => Promise<LoginOutcome | 'upstream'> | LoginOutcome | 'upstream';

export interface Frontdoor {
  protocol: 'imap' | 'smtp' | 'pop3';
  port: number;
  listener: Listener;
  metrics: Metrics;
  upstream: EchoUpstream;
  requests: LoginRequest[];
  signals: AbortSignal[];
  releases: number;
  close(): Promise<void>;
}

export const UPSTREAM_CAPS = ['IMAP4rev1', 'IDLE', 'NAMESPACE'];
export const UPSTREAM_BUFFERED = '* 3 EXISTS\r\n';
/** CAPA lines of the stand-in POP3 upstream (as Dovecot advertises them after TLS). */
export const POP3_UPSTREAM_CAPS = [
  'TOP',
  'UIDL',
  'RESP-CODES',
  'PIPELINING',
  'AUTH-RESP-CODE',
  'USER',
  'SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER',
];
/** EHLO keywords of the stand-in SMTP upstream (as Dovecot submission advertises them). */
export const SMTP_UPSTREAM_CAPS = [
  '8BITMIME',
  'AUTH PLAIN LOGIN XOAUTH2 OAUTHBEARER',
  'BURL imap',
  'CHUNKING',
  'ENHANCEDSTATUSCODES',
  'SIZE 40000000',
  'PIPELINING',
];

/** Starts one listener with a test-double LoginHandler; 'upstream' means succeed via EchoUpstream. */
export async function startFrontdoor(
  cfg: Partial<ListenerConfig> & Pick<ListenerConfig, 'tls'>,
  opts: {
    limits?: Partial<WireLimits>;
    decide?: Decide;
    upstream?: 'echo' | 'imap';
    /** SMTP: what each upstream behind the listener advertised (undefined: not contacted yet). */
    smtpUpstreams?: ReadonlyArray<readonly string[] | undefined>;
    /** POP3: what each upstream behind the listener said to CAPA (undefined: not contacted yet). */
    pop3Upstreams?: ReadonlyArray<readonly string[] | undefined>;
    /** Bounds connections not yet logged in (the app shares one per process). */
    gate?: PreauthGate;
    /** Addresses the limiter locked: closed at accept. */
    refuseAddress?: (address: string) => boolean;
    /** Where connections of a locked address wait before they are closed (the app passes the gate's). */
    tarpit?: Tarpit;
  } = {},
): Promise<Frontdoor> {
  const upstream = new EchoUpstream(opts.upstream);
  await upstream.start();
  const metrics = createMetrics({ defaults: false });
  const { cert, key } = await testPems();
  const decide: Decide = opts.decide ?? (() => 'upstream');
  const fd: Frontdoor = {
    protocol: cfg.protocol ?? 'imap',
    port: 0,
    metrics,
    upstream,
    requests: [],
    signals: [],
    releases: 0,
    listener: undefined as unknown as Listener,
    close: async () => {
      await fd.listener.close({ drainMs: 0 });
      await upstream.stop();
    },
  };
  const limits = { ...DEFAULT_LIMITS, ...opts.limits };
  const runner = new LoginRunner({
    metrics,
    timeoutMs: limits.loginTimeoutMs,
    handler: {
      login: async (req, signal) => {
        fd.requests.push(req);
        fd.signals.push(signal);
        const d = await decide(req, signal);
        if (d !== 'upstream') return d;
        const socket = connect(upstream.port, '127.0.0.1');
        await once(socket, 'connect');
        socket.pause();
        return {
          ok: true,
          upstream: {
            socket,
            capabilities:
              lc.protocol === 'smtp'
                ? SMTP_UPSTREAM_CAPS
                : lc.protocol === 'pop3'
                  ? POP3_UPSTREAM_CAPS
                  : UPSTREAM_CAPS,
            buffered: Buffer.from(lc.protocol === 'imap' ? UPSTREAM_BUFFERED : ''),
          },
          release: () => {
            fd.releases++;
          },
          accountLabel: 'test',
        };
      },
    },
  });
  const lc: ListenerConfig = {
    name: 'test',
    address: '127.0.0.1',
    port: 0,
    allow_cleartext_login: false,
    protocol: 'imap',
    min_tls_version: 'TLSv1.2',
    ...cfg,
  };
  fd.listener = createListener(lc, {
    tls: cfg.tls === 'none' ? undefined : { cert, key },
    createSession:
      lc.protocol === 'smtp'
        ? smtpFrontDoor(lc, {
            runner,
            limits,
            metrics,
            upstreamCapabilities: () => opts.smtpUpstreams ?? [SMTP_UPSTREAM_CAPS],
            gate: opts.gate,
          })
        : lc.protocol === 'pop3'
          ? pop3FrontDoor(lc, {
              runner,
              limits,
              metrics,
              upstreamCapabilities: () => opts.pop3Upstreams ?? [POP3_UPSTREAM_CAPS],
              gate: opts.gate,
            })
          : imapFrontDoor(lc, { runner, limits, metrics, gate: opts.gate }),
    limits,
    metrics,
    log: silentLogger,
    ...(opts.refuseAddress ? { refuseAddress: opts.refuseAddress } : {}),
    ...(opts.tarpit ? { tarpit: opts.tarpit } : {}),
  });
  fd.port = (await fd.listener.listen()).port;
  return fd;
}

/** base64 of a text, as SASL exchanges carry it. */
export const b64 = (s: string): string => Buffer.from(s).toString('base64');
/** An AUTH PLAIN response: authzid, user and password joined by NULs, in base64. */
export const plainIr = (user: string, pw: string, authzid = ''): string => b64(`${authzid}\0${user}\0${pw}`);

/** Current value of a counter/gauge series, 0 when absent. */
export async function metricValue(m: Metrics, name: string, labels: Record<string, string>): Promise<number> {
  const all = await m.registry.getMetricsAsJSON();
  const metric = all.find((x) => x.name === name);
  const v = metric?.values.find((val) =>
    Object.entries(labels).every(([k, want]) => String(val.labels[k]) === want),
  );
  return v?.value ?? 0;
}

/** preauth_rejections_total{reason} of the listener's protocol. */
export const rejections = (fd: Frontdoor, reason: string): Promise<number> =>
  metricValue(fd.metrics, 'imap_proxy_preauth_rejections_total', { protocol: fd.protocol, reason });
/** logins_total{result} of the listener's protocol. */
export const logins = (fd: Frontdoor, result: string): Promise<number> =>
  metricValue(fd.metrics, 'imap_proxy_logins_total', { protocol: fd.protocol, result });

/** tls_connections_total{version} of the listener's protocol on the listener "test". */
export const tlsConnections = (fd: Frontdoor, version: string): Promise<number> =>
  metricValue(fd.metrics, 'imap_proxy_tls_connections_total', {
    protocol: fd.protocol,
    listener: 'test',
    version,
  });

/**
 * Asserts `c` is spliced to the echoing upstream: QUIT comes back from it instead of being
 * answered, the session counts as spliced, and closing `c` releases the session.
 */
export async function assertSplicedUntilClosed(fd: Frontdoor, c: RawImapClient): Promise<void> {
  c.write('QUIT\r\n');
  assert.equal(await c.readLine(), 'QUIT', 'spliced: QUIT is the upstream’s business');
  const spliced = { protocol: fd.protocol, phase: 'spliced' };
  assert.ok((await metricValue(fd.metrics, 'imap_proxy_active_sessions', spliced)) > 0);
  const released = fd.releases;
  c.close();
  await until(() => fd.releases > released, 5000, 'the spliced session to be released');
}

/** The lines, each ended by CRLF. */
export const crlf = (lines: string[]): string => lines.map((l) => `${l}\r\n`).join('');

/** `wire` cut at the given offsets (taken modulo its length), in order; empty pieces dropped. */
export function cutAt(wire: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((n) => n % wire.length))].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, wire.length]) {
    if (p > prev) pieces.push(wire.subarray(prev, p));
    prev = p;
  }
  return pieces;
}

/** After the greeting, sends the pieces one write each (yielding between them); all replies up to the close. */
export async function converse(port: number, greeting: string, pieces: Buffer[]): Promise<string> {
  const c = await RawImapClient.connect(port);
  try {
    assert.equal(await c.readLine(), greeting);
    c.socket.setNoDelay(true);
    for (const p of pieces) {
      c.write(p);
      await new Promise((r) => setImmediate(r));
    }
    return await c.readToClose(10_000);
  } finally {
    c.close();
  }
}

/** The front door answers `wire` identically sent whole, byte by byte and split at every offset. */
export async function assertSameEverySplit(
  port: number,
  greeting: string,
  wire: Buffer,
  transcript: string,
): Promise<void> {
  assert.equal(await converse(port, greeting, [wire]), transcript, 'whole');
  const bytes = [...wire].map((b) => Buffer.from([b]));
  assert.equal(await converse(port, greeting, bytes), transcript, 'byte by byte');
  for (let i = 1; i < wire.length; i++) {
    const pieces = [wire.subarray(0, i), wire.subarray(i)];
    assert.equal(await converse(port, greeting, pieces), transcript, `split at ${i}`);
  }
}

/** Lines SMTP and POP3 share: AUTH in its forms, a SASL cancel and filler, HTTP request lines. */
const SHARED_VERBS = [
  'AUTH',
  'AUTH PLAIN',
  'AUTH LOGIN',
  'auth login',
  `AUTH PLAIN ${b64('\0alice\0pw')}`,
  `AUTH LOGIN ${b64('alice')}`,
  'AUTH XOAUTH2',
  '*',
  '=',
  'GET',
  'POST / HTTP/1.0',
];

/**
 * One command line's bytes (no CR or LF inside): a known verb (the protocol's `verbs` or one
 * SMTP and POP3 share) with noise, noise alone, or `fill` padded to about `lineBytes`.
 */
function arbCommandLine(verbs: string[], fill: string, lineBytes: number): fc.Arbitrary<Buffer> {
  return fc.oneof(
    fc
      .tuple(
        fc.constantFrom(...verbs, ...SHARED_VERBS),
        fc.option(fc.string({ maxLength: 40 }), { nil: undefined }),
      )
      .map(([verb, arg]) => Buffer.from(arg === undefined ? verb : `${verb} ${arg}`)),
    fc.uint8Array({ maxLength: lineBytes + 60 }).map((a) => Buffer.from(a)),
    // Lines around the limit: at it they are answered, one over closes the connection.
    fc
      .integer({ min: lineBytes - 2, max: lineBytes + 2 })
      .map((n) => Buffer.concat([Buffer.from(`${fill} `), Buffer.alloc(n - fill.length - 1, 0x78)])),
  );
}

/** How a protocol's replies to random lines are judged. */
export interface RandomLinesRules {
  /** Splits what the server said into replies, asserting each is well formed. */
  replies(got: string): string[];
  /** The last reply may end a connection: QUIT's answer or a closing reply. */
  ends(last: string): boolean;
  /** QUIT was answered. */
  quitAnswered(said: string[], got: string): boolean;
  /** The closing reply to a line over `lineBytes`. */
  tooLong: string;
  lineBytes: number;
  /** Anything else every transcript must show. */
  more?(said: string[]): void;
}

/**
 * Random lines, however chunked, then `*` and QUIT: well-formed replies only, and the
 * connection always ends (QUIT's answer, a closing reply, or silence after an HTTP line; too
 * long only for a line over the limit); afterwards no pre-auth session is left and the listener
 * still greets.
 */
async function assertRandomLines(
  fd: Frontdoor,
  arbLine: fc.Arbitrary<Buffer>,
  runs: number,
  rules: RandomLinesRules,
): Promise<void> {
  const greeting = CLEAR_GREETING[fd.protocol]!;
  await fc.assert(
    fc.asyncProperty(
      fc.array(arbLine, { minLength: 1, maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      async (lines, cuts) => {
        const clean = lines.map((l) => Buffer.from(l.filter((b) => b !== 0x0a && b !== 0x0d)));
        // A trailing `*` ends any SASL exchange the noise began, so QUIT is read as a command.
        const wire = Buffer.concat([
          ...clean.flatMap((l) => [l, Buffer.from('\r\n')]),
          Buffer.from('*\r\nQUIT\r\n'),
        ]);
        const got = await converse(fd.port, greeting, cutAt(wire, cuts));
        const said = rules.replies(got);
        const lastReply = said.at(-1) ?? '';
        const http = clean.some((l) => /^[A-Z]+ \S+ HTTP\/\d/.test(l.toString('latin1')));
        assert.ok(
          rules.ends(lastReply) || (http && !rules.quitAnswered(said, got)),
          `ends with QUIT's answer, a closing reply, or silence after an HTTP line: ${JSON.stringify(got)}`,
        );
        if (lastReply === rules.tooLong)
          assert.ok(
            clean.some((l) => l.length > rules.lineBytes),
            'only a line over the limit is refused as too long',
          );
        rules.more?.(said);
      },
    ),
    { numRuns: runs },
  );
  const preauth = { protocol: fd.protocol, phase: 'preauth' };
  await until(
    async () => (await metricValue(fd.metrics, 'imap_proxy_active_sessions', preauth)) === 0,
    5000,
    'every pre-auth session to end',
  );
  const c = await RawImapClient.connect(fd.port);
  try {
    assert.equal(await c.readLine(), greeting, 'still serving');
  } finally {
    c.close();
  }
}

/**
 * The suite "<PROTOCOL> front door under random input" on a cleartext listener where every
 * login fails: random lines judged by `rules` (see assertRandomLines), and endless noise cut off
 * at the line limit with `rules.tooLong`, named `tooLongName` in the title.
 */
export function describeRandomInput(
  protocol: 'smtp' | 'pop3',
  o: { verbs: string[]; fill: string; runs: number; tooLongName: string; rules: RandomLinesRules },
): void {
  const { rules, runs } = o;
  describe(`${protocol.toUpperCase()} front door under random input`, () => {
    const listener = suiteListener(protocol, { lineBytes: rules.lineBytes });

    test('random command lines, however chunked: well-formed replies only, and the connection always ends', async () => {
      await assertRandomLines(listener(), arbCommandLine(o.verbs, o.fill, rules.lineBytes), runs, rules);
    });

    test(`bytes without a line end are never held past the limit: ${o.tooLongName} without waiting for LF`, async () => {
      await assertLongNoiseRefused(listener(), rules.lineBytes, `${rules.tooLong}\r\n`, runs);
    });
  });
}

/**
 * A cleartext listener of `protocol` with login allowed and every login refused as
 * bad_credentials, up for the tests of the current suite.
 */
export function suiteListener(protocol: 'smtp' | 'pop3', limits: Partial<WireLimits>): () => Frontdoor {
  let fd: Frontdoor | undefined;
  before(async () => {
    fd = await startFrontdoor(
      {
        protocol,
        tls: 'none',
        allow_cleartext_login: true,
        ...(protocol === 'smtp' ? { server_name: CLEAR_NAME } : {}),
      },
      { limits, decide: () => ({ ok: false, reason: 'bad_credentials' }) },
    );
  });
  after(() => fd?.close());
  return () => {
    assert.ok(fd, 'the listener is up');
    return fd;
  };
}

/** Noise without a line end, however chunked, is refused with `reply` once past `lineBytes`, without waiting for LF. */
async function assertLongNoiseRefused(
  fd: Frontdoor,
  lineBytes: number,
  reply: string,
  runs: number,
): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ minLength: lineBytes + 2, maxLength: 4 * lineBytes }),
      fc.array(fc.nat(), { maxLength: 4 }),
      async (noise, cuts) => {
        const wire = Buffer.from(noise.map((b) => (b === 0x0a ? 0x20 : b)));
        assert.equal(await converse(fd.port, CLEAR_GREETING[fd.protocol]!, cutAt(wire, cuts)), reply);
      },
    ),
    { numRuns: runs },
  );
}

/** The SMTP server name of the listeners below. */
export const CLEAR_NAME = 'mx.test';
/** What a listener of each protocol below greets with. */
export const CLEAR_GREETING: Record<string, string> = {
  imap: '* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN] imap-oauth-proxy ready',
  smtp: `220 ${CLEAR_NAME} ESMTP imap-oauth-proxy ready`,
  pop3: '+OK imap-oauth-proxy POP3 ready',
};
/** A protocol's last words before login carrying `text`. */
export const goodbye = (protocol: string, text: string) =>
  protocol === 'imap'
    ? `* BYE ${text}\r\n`
    : protocol === 'smtp'
      ? `421 4.7.0 ${CLEAR_NAME} ${text}\r\n`
      : `-ERR [SYS/TEMP] ${text}\r\n`;

/** A cleartext listener of `protocol` with login allowed, closed after the test. */
export async function startCleartext(
  protocol: 'imap' | 'smtp' | 'pop3',
  t: { after: (fn: () => Promise<void> | void) => void },
  opts: Parameters<typeof startFrontdoor>[1] = {},
): Promise<Frontdoor> {
  const fd = await startFrontdoor(
    {
      protocol,
      tls: 'none',
      allow_cleartext_login: true,
      ...(protocol === 'smtp' ? { server_name: CLEAR_NAME } : {}),
    },
    opts,
  );
  t.after(() => fd.close());
  return fd;
}

/**
 * Starts listeners of `protocol` (SMTP named CLEAR_NAME), each closed after its test; login on
 * cleartext only if `cleartext`, and room for 100 bad commands unless `limits` says otherwise.
 */
export function frontdoorFor(protocol: 'smtp' | 'pop3') {
  return async (
    t: { after: (fn: () => Promise<void>) => void },
    tls: 'none' | 'starttls' | 'implicit',
    opts: {
      cleartext?: boolean;
      limits?: Partial<WireLimits>;
      decide?: Decide;
      /** What each upstream behind the listener advertised (undefined: not contacted yet). */
      upstreams?: ReadonlyArray<readonly string[] | undefined>;
    } = {},
  ): Promise<Frontdoor> => {
    const fd = await startFrontdoor(
      {
        protocol,
        tls,
        allow_cleartext_login: opts.cleartext ?? false,
        ...(protocol === 'smtp' ? { server_name: CLEAR_NAME } : {}),
      },
      {
        limits: { badCommands: 100, ...opts.limits },
        ...(opts.decide ? { decide: opts.decide } : {}),
        ...(opts.upstreams && protocol === 'smtp' ? { smtpUpstreams: opts.upstreams } : {}),
        ...(opts.upstreams && protocol === 'pop3' ? { pop3Upstreams: opts.upstreams } : {}),
      },
    );
    t.after(() => fd.close());
    return fd;
  };
}

/** Connects (implicit TLS listeners get a TLS client), closed after the test, and reads the greeting. */
export async function openGreeted(
  t: { after: (fn: () => void) => void },
  fd: Frontdoor,
  tls: boolean,
): Promise<RawImapClient> {
  const c = await RawImapClient.connect(fd.port, { tls });
  t.after(() => c.close());
  assert.equal(await c.readLine(), CLEAR_GREETING[fd.protocol]);
  return c;
}

/** A protocol's words for the limits before login. */
export interface PreauthLimitWords {
  /** What login is called in the titles: `login` or `AUTH`. */
  login: string;
  /** `a POP3` or `an SMTP`, as the titles say it. */
  anAnswer: string;
  /** Sends a command line and returns its reply (multi-line replies read whole) as one string. */
  exchange(c: RawImapClient, line: string): Promise<string>;
  /** A valid command before login, and its reply's first line. */
  valid: [line: string, reply: string];
  /** A command that still takes an argument up to the line limit, and its reply. */
  filler: [verb: string, reply: string];
  /** The first line a client that talks before the greeting sends, and everything it then gets. */
  talkFirst: [line: string, got: string];
  /** The closing replies, CRLF included, and the code each title names. */
  tooManyCommands: string;
  idle: [code: string, reply: string];
  lineTooLong: [code: string, reply: string];
  shutdown: [code: string, reply: string];
}

/**
 * The limits every front door keeps before login, as tests: a cap on valid commands, the idle
 * timeout, talking before the greeting, an HTTP request line, the line limit, server shutdown.
 */
export function preauthLimitTests(protocol: 'smtp' | 'pop3', w: PreauthLimitWords): void {
  const frontdoor = frontdoorFor(protocol);

  test(`valid commands before ${w.login} are capped too`, async (t) => {
    const fd = await frontdoor(t, 'none', { limits: { preauthCommands: 5 } });
    const c = await openGreeted(t, fd, false);
    const [line, reply] = w.valid;
    for (let i = 0; i < 5; i++) assert.equal((await w.exchange(c, line)).split('\n')[0], reply);
    c.write(`${line}\r\n${line}\r\n`);
    assert.equal(await c.readToClose(), w.tooManyCommands);
    assert.equal(await rejections(fd, 'too_many_commands'), 1);
  });

  test(`idle too long before ${w.login}: ${w.idle[0]} and closed`, async (t) => {
    const fd = await frontdoor(t, 'none', { limits: { preauthIdleMs: 150 } });
    const c = await openGreeted(t, fd, false);
    assert.equal(await c.readToClose(), w.idle[1]);
    assert.equal(await rejections(fd, 'idle_timeout'), 1);
  });

  test('talking before the greeting: no greeting, closed, counted', async (t) => {
    const fd = await frontdoor(t, 'none', { limits: { greetingDelayMs: 10_000 }, cleartext: true });
    const c = await RawImapClient.connect(fd.port);
    t.after(() => c.close());
    c.write(`${w.talkFirst[0]}\r\n`);
    assert.equal(await c.readToClose(), w.talkFirst[1]);
    assert.equal(await rejections(fd, 'talk_before_greeting'), 1);
  });

  test(`an HTTP request line is closed without ${w.anAnswer} answer`, async (t) => {
    const fd = await frontdoor(t, 'none');
    const c = await openGreeted(t, fd, false);
    c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(await c.readToClose(), '');
    assert.equal(await rejections(fd, 'http_request'), 1);
  });

  test(`a line exactly at the limit is answered; one byte over: ${w.lineTooLong[0]} and closed`, async (t) => {
    const fd = await frontdoor(t, 'none', { limits: { lineBytes: 600 } });
    const c = await openGreeted(t, fd, false);
    const [verb, reply] = w.filler;
    const at = `${verb} ${'x'.repeat(600 - verb.length - 1)}`;
    assert.equal(Buffer.byteLength(at), 600);
    assert.equal(await w.exchange(c, at), reply);
    c.write(`${at}y\r\n`);
    assert.equal(await c.readToClose(), w.lineTooLong[1]);
    assert.equal(await rejections(fd, 'line_too_long'), 1);
  });

  test(`server shutdown: ${w.shutdown[0]} before ${w.login}`, async (t) => {
    const fd = await startFrontdoor({
      protocol,
      tls: 'none',
      ...(protocol === 'smtp' ? { server_name: CLEAR_NAME } : {}),
    });
    const c = await openGreeted(t, fd, false);
    const closing = fd.close();
    assert.equal(await c.readToClose(), w.shutdown[1]);
    await closing;
    assert.equal(await rejections(fd, 'shutdown'), 1);
  });
}

/** A listener whose logins fail as the test says, and a TLS client greeted on it. */
export interface Refusing {
  fd: Frontdoor;
  c: RawImapClient;
  /** Every login from now on fails with `reason` (and `clientText`, the extra words). */
  refuse(reason: FailureReason, clientText?: string): void;
}

/**
 * An implicit-TLS listener of `protocol` where every login fails, at first with `first`
 * (bad_credentials), with room for 100 failed logins unless `limits` says otherwise.
 */
export async function refusingFrontdoor(
  t: { after: (fn: () => Promise<void> | void) => void },
  protocol: 'smtp' | 'pop3',
  o: { first?: FailureReason; limits?: Partial<WireLimits> } = {},
): Promise<Refusing> {
  let next: LoginOutcome = { ok: false, reason: o.first ?? 'bad_credentials' };
  const fd = await frontdoorFor(protocol)(t, 'implicit', {
    decide: () => next,
    limits: o.limits ?? { failedLogins: 100 },
  });
  const c = await openGreeted(t, fd, true);
  return {
    fd,
    c,
    refuse: (reason, clientText) => {
      next = clientText ? { ok: false, reason, clientText } : { ok: false, reason };
    },
  };
}

/**
 * Each case fails an AUTH LOGIN (user on the AUTH line, so the password is the next line) with
 * its reason and extra words: answered `want`, the password never echoed.
 */
export async function assertFailureWords(
  r: Refusing,
  exchange: (c: RawImapClient, line: string) => Promise<string>,
  passwordChallenge: string,
  cases: Array<[reason: FailureReason, clientText: string, want: string]>,
): Promise<void> {
  for (const [reason, clientText, want] of cases) {
    r.refuse(reason, clientText);
    assert.equal(await exchange(r.c, `AUTH LOGIN ${b64('alice')}`), passwordChallenge);
    const got = await exchange(r.c, b64('Hunter2Secret'));
    assert.equal(got, want, reason);
    assert.doesNotMatch(got, /Hunter2Secret/);
  }
}

/** A listener of `protocol` whose logins never end by themselves (100 ms login timeout), and a TLS client greeted on it. */
export async function stalledFrontdoor(
  t: { after: (fn: () => Promise<void> | void) => void },
  protocol: 'smtp' | 'pop3',
): Promise<{ fd: Frontdoor; c: RawImapClient }> {
  const fd = await frontdoorFor(protocol)(t, 'implicit', {
    limits: { loginTimeoutMs: 100 },
    decide: async (_req, signal) => {
      await once(signal, 'abort');
      return { ok: false, reason: 'upstream_unavailable' };
    },
  });
  return { fd, c: await openGreeted(t, fd, true) };
}
