import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

export const ALERTS = 'config/prometheus/alerts.yaml';
export const ALERT_TESTS = 'config/prometheus/alerts.test.yaml';
export const DASHBOARD = 'config/grafana/dashboard.json';

/** Runs promtool (Debian package prometheus) with optional stdin; killed after 30 s. */
export function promtool(args: string[], stdin?: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile('promtool', args, { timeout: 30_000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? Number(err.code) : 0, output: `${stdout}${stderr}` });
    });
    child.stdin?.end(stdin ?? '');
  });
}

interface Panel {
  targets?: Array<{ expr?: string }>;
  panels?: Panel[];
}

/** Every PromQL expression in the dashboard's panels (rows included). */
export function dashboardExprs(): string[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  const walk = (ps: Panel[]): string[] =>
    ps.flatMap((p) => [
      ...(p.targets ?? []).flatMap((t) => (t.expr ? [t.expr] : [])),
      ...walk(p.panels ?? []),
    ]);
  return walk(dash.panels);
}

/** Every expression in the alert rules. */
export function ruleExprs(): string[] {
  const doc = parse(readFileSync(ALERTS, 'utf8')) as { groups: Array<{ rules: Array<{ expr: string }> }> };
  return doc.groups.flatMap((g) => g.rules.map((r) => r.expr));
}

/** Grafana's variables replaced by values Prometheus accepts, so promtool can parse the query. */
export function concreteExpr(expr: string): string {
  return expr
    .replaceAll('$__rate_interval', '5m')
    .replaceAll('$__range', '1h')
    .replaceAll('$instance', '.*')
    .replaceAll('$protocol', '.*');
}
