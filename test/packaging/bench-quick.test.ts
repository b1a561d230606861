import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

/** `bench --quick` end to end, so the benchmark cannot rot: every scenario present, numbers finite. */

const ROOT = join(import.meta.dirname, '..', '..');

test('bench --quick writes every scenario with proxy, direct and ratio', { timeout: 240_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-benchq-'));
  const out = join(dir, 'bench.json');
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/bench/run.ts', '--quick', '--out', out], {
      cwd: ROOT,
      env: { ...process.env, BENCH_FROM_SOURCE: '1', BENCH_STEPS: '50' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let text = '';
    child.stdout.on('data', (d: Buffer) => {
      text += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      text += d.toString();
    });
    const kill = setTimeout(() => child.kill('SIGKILL'), 230_000);
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    clearTimeout(kill);
    assert.equal(code, 0, text.slice(-3000));
    const r = JSON.parse(readFileSync(out, 'utf8'));
    assert.equal(r.quick, true);
    assert.equal(r.throughput.length, 4);
    for (const t of r.throughput) {
      assert.ok(t.proxyMBps > 0 && t.directMBps > 0 && Number.isFinite(t.ratio), JSON.stringify(t));
    }
    assert.equal(r.loginLatency.length, 2);
    for (const l of r.loginLatency) assert.ok(l.proxyP50ms > 0 && l.directP50ms > 0 && l.errors === 0);
    assert.deepEqual(
      r.loginRate.map((x: { concurrency: number }) => x.concurrency),
      [1, 8, 64],
    );
    // One row each for SMTP and POP3 bulk transfer, login latency (three interleaved legs) and SMTP rate.
    for (const rows of [r.smtpThroughput, r.pop3Throughput]) {
      assert.equal(rows.length, 1);
      const [t] = rows;
      assert.ok(
        t.proxyMBps > 0 && t.directMBps > 0 && t.ratio > 0 && t.proxyCpuMsPerMB > 0,
        JSON.stringify(t),
      );
      if ('haproxyMBps' in t) assert.ok(t.haproxyMBps > 0, JSON.stringify(t));
    }
    for (const l of [r.smtpAuthLatency, r.pop3LoginLatency]) {
      assert.equal(l.errors, 0, JSON.stringify(l));
      assert.equal(l.n, 15);
      assert.ok(l.proxyP50ms > 0 && l.directP50ms > 0 && l.directXoauth2P50ms > 0, JSON.stringify(l));
    }
    assert.equal(r.smtpRate.errors, 0, JSON.stringify(r.smtpRate));
    assert.ok(r.smtpRate.proxyPerSec > 0 && r.smtpRate.directPerSec > 0, JSON.stringify(r.smtpRate));
    assert.equal(r.concurrency.steps[0].sessions, 50, JSON.stringify(r.concurrency.steps[0]));
    assert.ok(r.concurrency.steps[0].rssPerSessionKiB > 0);
    assert.equal(r.refreshStorm.tokenRequests, 1, 'one token request for the storm');
    assert.equal(r.refreshStorm.ok, r.refreshStorm.logins);
    // Default limits: one address holds at most 50 unauthenticated connections; another still logs in.
    assert.ok(r.trickle.maxOpenAtOnce <= 50 && r.trickle.refused > 0, JSON.stringify(r.trickle));
    assert.equal(r.trickle.legit.loaded.errors, 0, JSON.stringify(r.trickle.legit));
    const during = r.spray.realUser.duringAttack;
    assert.ok(during.ok > 0 && during.errors === 0, JSON.stringify(r.spray));
    // The limiter's address threshold (30) plus one turn of checks: the spray's scrypt work stops there.
    assert.ok(r.spray.passwordChecks < 40, JSON.stringify(r.spray));
    assert.ok(r.spray.tarpit.held > 0, JSON.stringify(r.spray));
    assert.equal(r.soak, undefined, 'the soak runs only when named');
    // Graph delivery: every message through the proxy and straight to the fake, each on its path.
    const g = r.graph;
    const rate = g.messageRate;
    assert.equal(rate.errors, 0, JSON.stringify(rate));
    assert.equal(rate.graphSendMails, rate.messages, JSON.stringify(rate));
    assert.ok(
      rate.proxyPerSec > 0 && rate.directPerSec > 0 && rate.proxyCpuMsPerMB > 0,
      JSON.stringify(rate),
    );
    assert.deepEqual(
      g.throughput.map((t: { graphPath: string }) => t.graphPath),
      ['draft', 'sendMail'],
    );
    for (const t of g.throughput) {
      assert.equal(t.proxyMessagesOnPath, t.repeats, JSON.stringify(t));
      assert.ok(t.proxyMBps > 0 && t.directMBps > 0 && t.proxyCpuMsPerMB > 0, JSON.stringify(t));
    }
    assert.equal(g.throughput[0].uploadSessions, g.throughput[0].repeats, JSON.stringify(g.throughput[0]));
    // All K held at Graph at once, measured; none answered 250 while Graph never accepted it.
    assert.equal(g.memory.maxHeldAtOnce, g.memory.messages, JSON.stringify(g.memory));
    assert.ok(
      g.memory.rssPerMessageMB > 0 && g.memory.perMessageTimesMessageSize > 0,
      JSON.stringify(g.memory),
    );
    assert.equal(g.memory.repliesAfterTimeout['250'], undefined, JSON.stringify(g.memory));
    assert.match(text, /\| throughput \| proxy MB\/s/);
    assert.match(text, /\| SMTP DATA \d+ MB message.*\| \d/);
    assert.match(text, /\| POP3 RETR \d+ MB message.*\| \d/);
    assert.match(text, /\| POP3 USER\/PASS → \+OK, client leg TLS \| \d/);
    assert.match(text, /\| \d+ × 64 KB messages \(sendMail\).*\| [\d.]+ msg\/s \|/);
    assert.match(text, /\| \d+ × 4 MiB scans at once.*\| \d+ of \d+ \|/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
