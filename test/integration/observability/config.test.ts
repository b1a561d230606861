import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { createMetrics } from '../../../src/metrics.js';
import {
  ALERT_TESTS,
  ALERTS,
  concreteExpr,
  DASHBOARD,
  dashboardExprs,
  promtool,
  ruleExprs,
} from './promtool.js';

/** Series declared with a `protocol` label, read from the proxy's own metric definitions. */
function perProtocolSeries(): Set<string> {
  const out = new Set<string>();
  for (const m of createMetrics({ defaults: false }).registry.getMetricsAsArray()) {
    const labels = (m as unknown as { labelNames?: unknown }).labelNames;
    assert.ok(Array.isArray(labels), `${m.name}: label names readable`);
    if (labels.includes('protocol')) out.add(m.name);
  }
  assert.ok(out.has('imap_proxy_logins_total'), 'logins carry a protocol label');
  return out;
}

const SERIES = /\b(imap_proxy_[a-z0-9_]+?)(?:_bucket|_sum|_count)?\b(\{[^}]*\})?/g;

/** Per-protocol series the expression queries, and every way it fails to group (and filter) them by protocol. */
function protocolProblems(
  expr: string,
  perProtocol: Set<string>,
  filtered: boolean,
): { used: string[]; problems: string[] } {
  const used: string[] = [];
  const problems: string[] = [];
  for (const [whole, name, selector] of expr.matchAll(SERIES)) {
    if (!perProtocol.has(name!)) continue;
    used.push(name!);
    if (filtered && !selector?.includes('protocol=~"$protocol"'))
      problems.push(`${whole} is not filtered by $protocol`);
  }
  if (used.length > 0) {
    for (const [by] of expr.matchAll(/\bby \(([^)]*)\)/g)) {
      if (!/\bprotocol\b/.test(by)) problems.push(`${by} does not keep protocol`);
    }
  }
  return { used, problems };
}

describe('the Prometheus rules and the Grafana dashboard shipped in config/', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-obs-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('promtool check rules accepts config/prometheus/alerts.yaml', async () => {
    const r = await promtool(['check', 'rules', ALERTS]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS: 10 rules found/);
  });

  test('promtool test rules: each alert fires on its failure shape and stays quiet on a healthy proxy', async () => {
    const r = await promtool(['test', 'rules', ALERT_TESTS]);
    assert.equal(r.code, 0, r.output);
  });

  test('the alerts the admin needs exist', () => {
    const names = [...readFileSync(ALERTS, 'utf8').matchAll(/alert: (\w+)/g)].map((m) => m[1]);
    for (const a of [
      'ImapProxyDown',
      'ImapProxyGrantNeedsConsent',
      'ImapProxyTokenRefreshFailuresRising',
      'ImapProxyUpstreamUnavailable',
      'ImapProxyBruteForceSpike',
      'ImapProxyProtocolDisabledAtProvider',
      'ImapProxyGrantScopeMissing',
    ]) {
      assert.ok(names.includes(a), a);
    }
    assert.equal(ruleExprs().length, names.length);
  });

  test('every dashboard query is valid PromQL (promtool parses them as recording rules)', async () => {
    const exprs = dashboardExprs();
    const file = join(dir, 'dashboard-queries.yaml');
    const rules = exprs.map((e, i) => ({ record: `dashboard:query_${i}`, expr: concreteExpr(e) }));
    writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
    const r = await promtool(['check', 'rules', file]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, new RegExp(`SUCCESS: ${exprs.length} rules found`));
  });

  test('the dashboard imports: datasource input, unique panel ids, and the panels the admin asked for', () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      __inputs: Array<{ name: string; pluginId: string }>;
      uid: string;
      panels: Array<{ id: number; title: string; type: string }>;
    };
    assert.deepEqual(
      dash.__inputs.map((i) => [i.name, i.pluginId]),
      [['DS_PROMETHEUS', 'prometheus']],
    );
    const ids = dash.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length);
    const titles = dash.panels.map((p) => p.title);
    for (const t of [
      'Logins by result',
      'Failures by reason (this range)',
      'Token refresh failure ratio',
      'Grants needing consent',
      'Active sessions',
      'Login latency quantiles',
      'Pre-auth rejections by reason',
      'Live sessions ended by the proxy',
      'Short-lived access tokens by provider',
    ]) {
      assert.ok(titles.includes(t), t);
    }
  });

  test('the dashboard splits by protocol: a multi-select variable, and every per-protocol series filtered by it and grouped by protocol', () => {
    const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
      templating: { list: Array<Record<string, unknown>> };
    };
    const v = dash.templating.list.find((x) => x.name === 'protocol');
    assert.ok(v, 'a protocol template variable');
    assert.equal(v.definition, 'label_values(imap_proxy_logins_total, protocol)');
    assert.deepEqual([v.multi, v.includeAll, v.allValue], [true, true, '.*']);
    const perProtocol = perProtocolSeries();
    const shown = new Set<string>();
    const problems: string[] = [];
    for (const expr of dashboardExprs()) {
      const r = protocolProblems(expr, perProtocol, true);
      for (const n of r.used) shown.add(n);
      // Leaves protocol out of the result, so the split would be summed away.
      if (r.used.length > 0 && /\b(sum|avg|min|max|count)\s*\(/.test(expr)) {
        problems.push(`${expr}: aggregates without by (protocol)`);
      }
      problems.push(...r.problems.map((p) => `${expr}: ${p}`));
    }
    assert.deepEqual(problems, []);
    assert.deepEqual(
      [...perProtocol].filter((n) => !shown.has(n)),
      [],
      'every per-protocol series has a panel',
    );
  });

  test('alerts over per-protocol series keep protocol in their grouping and name it in the summary', () => {
    const doc = parse(readFileSync(ALERTS, 'utf8')) as {
      groups: Array<{ rules: Array<{ alert: string; expr: string; annotations: { summary: string } }> }>;
    };
    const perProtocol = perProtocolSeries();
    const split: string[] = [];
    for (const rule of doc.groups.flatMap((g) => g.rules)) {
      const r = protocolProblems(rule.expr, perProtocol, false);
      if (r.used.length === 0) continue;
      split.push(rule.alert);
      assert.deepEqual(r.problems, [], rule.alert);
      assert.match(rule.annotations.summary, /\$labels\.protocol/, rule.alert);
    }
    assert.deepEqual(split.sort(), [
      'ImapProxyBruteForceSpike',
      'ImapProxyGrantScopeMissing',
      'ImapProxyProtocolDisabledAtProvider',
      'ImapProxyTokenEndpointUnavailable',
      'ImapProxyUpstreamUnavailable',
    ]);
  });
});
