/**
 * Adds metric families rendered by the cluster primary to the workers' aggregated text
 * exposition. A family both have (the admin limiter's counter shares limiter_actions_total with
 * the IMAP limiter) keeps one HELP/TYPE header, which the text format requires; the primary's
 * series differ from the workers' by their `worker` label.
 */
export function mergeExpositions(workers: string, primary: string): string {
  const families = parseFamilies(workers);
  for (const [name, lines] of parseFamilies(primary)) {
    const existing = families.get(name);
    if (existing) existing.push(...lines.filter((l) => !l.startsWith('#')));
    else families.set(name, lines);
  }
  return families.size === 0 ? '' : `${[...families.values()].map((l) => l.join('\n')).join('\n\n')}\n`;
}

/** Family name → its lines (HELP, TYPE, samples), in order. */
function parseFamilies(text: string): Map<string, string[]> {
  const families = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const help = /^# HELP (\S+)/.exec(line)?.[1];
    if (help !== undefined) {
      current = [];
      families.set(help, current);
    }
    if (!current) {
      // A sample without a preceding HELP line: keep it in a family of its own name.
      const [name = line] = line.split(/[{ ]/);
      current = [];
      families.set(name, current);
    }
    current.push(line);
  }
  return families;
}
