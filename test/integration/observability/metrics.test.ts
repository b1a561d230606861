import assert from 'node:assert/strict';
import { createServer, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { LoginResult } from '../../../src/errors.js';
import type { Metrics } from '../../../src/metrics.js';
import { type FakeUpstream, startFakeUpstream } from '../../helpers/fake-upstream.js';
import { RawImapClient } from '../../helpers/imap-client.js';
import { freePort } from '../../helpers/ports.js';
import { assertNoSecretsLogged, type Stack, startStack, type TestAccount } from '../../helpers/stack.js';
import { dashboardExprs, promtool, ruleExprs } from './promtool.js';
import { exportedNames, logLines, parseScrape, scrape } from './scrape.js';

type Counts = Map<string, number>;

async function loginCounts(m: Metrics): Promise<Counts> {
  return new Map((await m.logins.get()).values.map((v) => [String(v.labels.result), v.value]));
}

async function histogramCounts(m: Metrics): Promise<Counts> {
  const v = (await m.loginSeconds.get()).values.filter((x) => x.metricName?.endsWith('_count'));
  return new Map(v.map((x) => [String(x.labels.result), x.value]));
}

/** Non-zero changes between two snapshots, as a plain object for deepEqual. */
function delta(before: Counts, after: Counts): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of after) {
    const d = v - (before.get(k) ?? 0);
    if (d !== 0) out[k] = d;
  }
  return out;
}

/** A server that answers like a web server, for the one failure shape nothing else here makes. */
async function startGarbageUpstream(): Promise<{ port: number; server: Server }> {
  const server = createServer((s: Socket) => {
    s.on('error', () => {});
    s.end('HTTP/1.1 400 Bad Request\r\n\r\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as { port: number }).port, server };
}

describe('every login outcome is counted once, by its own reason, end to end (real OP and Dovecot; fakes for shapes Dovecot cannot make)', () => {
  let s: Stack;
  let attempts = 0;
  const holders: RawImapClient[] = [];
  // Fault injection a real Dovecot cannot do: refuse every token, "authenticated but not connected", never answer.
  let rejectAll: FakeUpstream;
  let notConnected: FakeUpstream;
  let hang: FakeUpstream;
  let garbage: { port: number; server: Server };

  before(async () => {
    [rejectAll, notConnected, hang, garbage] = await Promise.all([
      startFakeUpstream({ accept: new Set(), reject: 'gmail' }),
      startFakeUpstream({ notConnected: true }),
      startFakeUpstream({ accept: new Set(), reject: 'hang' }),
      startGarbageUpstream(),
    ]);
    s = await startStack({
      configYaml: () => 'limiter: { free_failures: 0, max_failures: 3, max_delay_ms: 1 }\n',
    });
  });
  after(async () => {
    for (const h of holders) h.close();
    s?.op.setDown(false);
    await s?.close();
    await Promise.all([rejectAll?.close(), notConnected?.close(), hang?.close()]);
    await new Promise<void>((r) => (garbage ? garbage.server.close(() => r()) : r()));
  });

  /** LOGIN over implicit TLS; returns the tagged reply. `hold` keeps a successful session open. */
  async function login(user: string, password: string, opts: { hold?: boolean } = {}): Promise<string> {
    const c = await RawImapClient.connect(s.ports.imaps, { tls: true });
    try {
      await c.readLine();
      attempts++;
      const tagged = (await c.command('a', `LOGIN ${user} "${password}"`)).at(-1)!;
      if (tagged.startsWith('a OK') && opts.hold) {
        holders.push(c);
        return tagged;
      }
      if (tagged.startsWith('a OK')) await c.command('z', 'LOGOUT');
      return tagged;
    } finally {
      if (!opts.hold) c.close();
    }
  }

  const fake = (f: { port: number; caFile: string }, extra: Record<string, unknown> = {}) => ({
    host: '127.0.0.1',
    port: f.port,
    tls: 'implicit',
    ca_file: f.caFile,
    ...extra,
  });

  async function expire(a: TestAccount, accessToken: string | null): Promise<void> {
    const g = (await s.app.store.getGrant(a.account.id))!;
    await s.app.store.putGrant(
      a.account.id,
      { ...g, accessToken, accessTokenExpiresAt: Date.now() - 60_000 },
      'test',
    );
  }

  interface Case {
    result: LoginResult;
    reply: RegExp;
    /** Runs before the counters are read (e.g. earlier failures that arm the limiter). */
    prepare?: () => Promise<() => Promise<string>>;
  }

  const cases: Case[] = [
    {
      result: 'success',
      reply: /^a OK \[CAPABILITY /,
      prepare: async () => {
        const a = await s.addAccount('ok-user');
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'bad_credentials',
      reply: /^a NO \[AUTHENTICATIONFAILED\]/,
      prepare: async () => {
        const a = await s.addAccount('typo-user');
        return () => login(a.login, 'aaaa-bbbb-cccc-dddd-eeee-ffff');
      },
    },
    {
      result: 'limited',
      reply: /^a NO \[LIMIT\] Too many failed logins/,
      prepare: async () => {
        const a = await s.addAccount('guessed-user');
        for (let i = 0; i < 3; i++) await login(a.login, `wrong-guess-${i}`);
        // The real password now gets [LIMIT] too: it is refused before it is checked.
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'session_limit',
      reply: /^a NO \[LIMIT\] Too many concurrent sessions/,
      prepare: async () => {
        const a = await s.addAccount('capped-user', { maxSessions: 1 });
        assert.match(await login(a.login, a.password, { hold: true }), /^a OK/);
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'privacy_required',
      reply: /^a NO \[PRIVACYREQUIRED\]/,
      prepare: async () => {
        const a = await s.addAccount('cleartext-user');
        return async () => {
          const c = await RawImapClient.connect(s.ports.starttls);
          try {
            await c.readLine();
            attempts++;
            return (await c.command('a', `LOGIN ${a.login} "${a.password}"`)).at(-1)!;
          } finally {
            c.close();
          }
        };
      },
    },
    {
      result: 'account_disabled',
      reply: /^a NO \[CONTACTADMIN\] Account disabled/,
      prepare: async () => {
        const a = await s.addAccount('disabled-user');
        await s.app.store.setAccountStatus(a.account.id, 'disabled', 'test');
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'no_grant',
      reply: /^a NO \[CONTACTADMIN\] Mailbox not connected/,
      prepare: async () => {
        const a = await s.addAccount('unconnected-user', { grant: 'none' });
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'needs_consent',
      reply: /^a NO \[EXPIRED\] /,
      prepare: async () => {
        const a = await s.addAccount('revoked-user');
        await s.op.revoke(a.refreshToken!);
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'token_unavailable',
      reply: /^a NO \[UNAVAILABLE\] Authorization server unavailable/,
      prepare: async () => {
        const a = await s.addAccount('op-down-user');
        await expire(a, null);
        return async () => {
          s.op.setDown(true);
          try {
            return await login(a.login, a.password);
          } finally {
            s.op.setDown(false);
          }
        };
      },
    },
    {
      result: 'upstream_rejected',
      reply: /^a NO \[AUTHORIZATIONFAILED\] Mail server rejected/,
      prepare: async () => {
        const a = await s.addAccount('rejected-user', { upstreamOverride: fake(rejectAll) });
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'upstream_unavailable',
      reply: /^a NO \[UNAVAILABLE\] Mail server unavailable/,
      prepare: async () => {
        const a = await s.addAccount('down-user', { upstreamOverride: { port: await freePort() } });
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'authorization_failed',
      reply: /^a NO \[AUTHORIZATIONFAILED\] Mail server refused access/,
      prepare: async () => {
        const a = await s.addAccount('no-mailbox-user', {
          upstreamOverride: fake(notConnected, { post_login_probe: true }),
        });
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'protocol_error',
      reply: /^a NO \[UNAVAILABLE\] Mail server protocol error/,
      prepare: async () => {
        const a = await s.addAccount('web-server-user', {
          upstreamOverride: { host: '127.0.0.1', port: garbage.port, tls: 'starttls' },
        });
        return () => login(a.login, a.password);
      },
    },
    {
      result: 'timeout',
      reply: /^a NO \[UNAVAILABLE\] Timed out/,
      prepare: async () => {
        const a = await s.addAccount('silent-upstream-user', {
          upstreamOverride: fake(hang, { auth_timeout_seconds: 1 }),
        });
        return () => login(a.login, a.password);
      },
    },
  ];

  for (const c of cases) {
    test(`${c.result}: logins_total{result="${c.result}"} +1, no other login counter moves`, async () => {
      const run = await c.prepare!();
      const [counts0, hist0] = [await loginCounts(s.metrics), await histogramCounts(s.metrics)];
      assert.match(await run(), c.reply);
      assert.deepEqual(delta(counts0, await loginCounts(s.metrics)), { [c.result]: 1 });
      assert.deepEqual(delta(hist0, await histogramCounts(s.metrics)), { [c.result]: 1 });
    });
  }

  test('the scrape agrees: login counters and histogram counts both equal the logins attempted', async () => {
    const m = parseScrape(await scrape(s.ports.admin));
    const total = (name: string) => m.filter((x) => x.name === name).reduce((sum, x) => sum + x.value, 0);
    assert.equal(total('imap_proxy_logins_total'), attempts);
    assert.equal(total('imap_proxy_login_duration_seconds_count'), attempts);
    const byResult = new Set(
      m.filter((x) => x.name === 'imap_proxy_logins_total').map((x) => x.labels.result),
    );
    for (const c of cases) assert.ok(byResult.has(c.result), `logins_total{result="${c.result}"} exported`);
  });

  test('refresh, upstream and limiter counters name provider and reason; grants gauge shows needs_consent', async () => {
    const m = parseScrape(await scrape(s.ports.admin));
    const value = (name: string, labels: Record<string, string>) =>
      m.find((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))?.value;
    assert.equal(value('imap_proxy_grants', { status: 'needs_consent' }), 1);
    assert.equal(
      value('imap_proxy_token_refreshes_total', { provider: 'local', result: 'invalid_grant' }),
      1,
    );
    assert.ok(value('imap_proxy_token_refreshes_total', { provider: 'local', result: 'unavailable' })! >= 1);
    assert.ok(value('imap_proxy_token_refreshes_total', { provider: 'local', result: 'success' })! >= 1);
    assert.ok(value('imap_proxy_token_refresh_duration_seconds_count', { provider: 'local' })! >= 3);
    assert.ok(value('imap_proxy_upstream_connects_total', { provider: 'local', result: 'success' })! >= 1);
    assert.equal(
      value('imap_proxy_upstream_connects_total', { provider: 'local', result: 'upstream_unavailable' }),
      1,
    );
    assert.equal(
      value('imap_proxy_upstream_connects_total', { provider: 'local', result: 'protocol_error' }),
      1,
    );
    assert.ok(value('imap_proxy_upstream_connect_duration_seconds_count', { provider: 'local' })! >= 1);
    // rejected-user: first token and the forced-refresh retry; revoked-user: the revoked token.
    const rejected = m
      .filter((x) => x.name === 'imap_proxy_upstream_auths_total' && x.labels.result === 'upstream_rejected')
      .reduce((sum, x) => sum + x.value, 0);
    assert.equal(rejected, 3);
    assert.equal(
      m.find(
        (x) => x.name === 'imap_proxy_upstream_auths_total' && x.labels.result === 'authorization_failed',
      )?.value,
      1,
    );
    assert.equal(value('imap_proxy_limiter_actions_total', { scope: 'user', action: 'refused' }), 1);
    assert.equal(value('imap_proxy_connections_total', { listener: 'starttls', tls: 'starttls' }), 1);
    assert.ok(value('imap_proxy_connections_total', { listener: 'imaps', tls: 'implicit' })! >= attempts - 1);
    assert.equal(
      value('imap_proxy_active_sessions', { listener: 'imaps', phase: 'spliced' }),
      1,
      'the held session',
    );
    assert.ok(value('imap_proxy_spliced_bytes_total', { direction: 'client_to_upstream' })! > 0);
    assert.ok(value('imap_proxy_spliced_bytes_total', { direction: 'upstream_to_client' })! > 0);
    assert.equal(value('imap_proxy_build_info', { version: 'test', node: process.version }), 1);
    assert.ok(value('imap_proxy_process_cpu_seconds_total', {}) !== undefined, 'process default metrics');
    for (const x of m) {
      for (const v of Object.values(x.labels)) {
        assert.ok(!v.includes('@') && !v.includes('-user'), `no user name as a label value: ${x.name} ${v}`);
      }
    }
  });

  test('promtool check metrics accepts a live scrape with every series populated', async () => {
    const r = await promtool(['check', 'metrics'], await scrape(s.ports.admin));
    // prom-client's default gauges nodejs_active_{handles,requests,resources}_total carry a
    // "_total" suffix promtool dislikes; they are the library's names, not ours.
    const findings = r.output
      .split('\n')
      .filter((l) => l.trim() !== '' && !/^imap_proxy_nodejs_active_\w+_total non-counter/.test(l));
    assert.deepEqual(findings, [], r.output);
  });

  test('every metric the dashboard and the alert rules query is one the proxy exports', async () => {
    const exported = exportedNames(await scrape(s.ports.admin));
    const exprs = [...dashboardExprs(), ...ruleExprs()];
    assert.ok(exprs.length >= 20, 'the dashboard and rules were read');
    const used = new Set(exprs.flatMap((e) => e.match(/\bimap_proxy_[a-z0-9_]+/g) ?? []));
    assert.ok(used.size >= 12);
    for (const name of used) assert.ok(exported.has(name), `${name} is queried but not exported`);
  });

  test('one summary line per session: result, reason, login and total time, bytes each way, account', () => {
    const ends = logLines(s.logs()).filter((l) => l.msg === 'session end');
    const ok = ends.find((l) => l.account === 'ok-user');
    assert.ok(ok, 'the successful session ended with a summary naming its account');
    assert.equal(ok.result, 'success');
    assert.equal(ok.listener, 'imaps');
    assert.equal(typeof ok.cid, 'string');
    assert.equal(ok.client, '127.0.0.1');
    assert.ok((ok.loginMs as number) >= 0 && (ok.totalMs as number) >= (ok.loginMs as number));
    assert.ok((ok.bytesIn as number) > 0 && (ok.bytesOut as number) > 0, 'LOGOUT went through the splice');
    const consent = ends.find((l) => l.account === 'revoked-user');
    assert.equal(consent?.result, 'needs_consent');
    assert.equal(consent?.bytesIn, 0);
    const cids = ends.map((l) => l.cid);
    assert.equal(new Set(cids).size, cids.length, 'never two summaries for one connection');
  });

  test('account and grant changes are logged as audit events at info', () => {
    const audits = logLines(s.logs()).filter((l) => typeof l.msg === 'string' && l.msg.startsWith('audit: '));
    const actions = audits.map((l) => (l.audit as { action: string }).action);
    assert.ok(actions.includes('account.create'));
    assert.ok(actions.includes('password.add'));
    assert.ok(actions.includes('account.disable'));
    assert.ok(actions.includes('grant.needs_consent'), 'a lost consent reaches the log');
    assert.ok(audits.every((l) => l.level === 30));
  });

  test('the log scan the stack runs on close() would catch a leaked token', () => {
    const leaked = `${s.logs()}{"level":30,"msg":"oops","t":"${[...s.secrets].at(-1)}"}\n`;
    assert.throws(() => assertNoSecretsLogged(leaked, s.secrets), /secrets found in the proxy's logs/);
    assertNoSecretsLogged(s.logs(), s.secrets);
  });
});
