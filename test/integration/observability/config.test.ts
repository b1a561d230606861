import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { stringify } from 'yaml';
import {
  ALERT_TESTS,
  ALERTS,
  concreteExpr,
  DASHBOARD,
  dashboardExprs,
  promtool,
  ruleExprs,
} from './promtool.js';

describe('the Prometheus rules and the Grafana dashboard shipped in config/', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-obs-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('promtool check rules accepts config/prometheus/alerts.yaml', async () => {
    const r = await promtool(['check', 'rules', ALERTS]);
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, /SUCCESS: 6 rules found/);
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
    ]) {
      assert.ok(titles.includes(t), t);
    }
  });
});
