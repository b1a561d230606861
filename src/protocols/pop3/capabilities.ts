/**
 * The POP3 capabilities a front door may promise before login that the upstream must have
 * (RFC 2449). Clients may keep the pre-login CAPA answer, so one is advertised only when every
 * upstream behind the listener has it.
 */
export const SAFE_CAPABILITIES = ['TOP', 'UIDL', 'PIPELINING'] as const;

function keyword(line: string): string {
  const sp = line.indexOf(' ');
  return (sp === -1 ? line : line.slice(0, sp)).toUpperCase();
}

/** The safe capabilities every known upstream shares; an upstream not contacted yet (undefined) allows none. */
export function sharedCapabilities(upstreams: ReadonlyArray<readonly string[] | undefined>): string[] {
  if (upstreams.length === 0 || upstreams.some((u) => u === undefined)) return [];
  const sets = upstreams.map((u) => new Set((u ?? []).map(keyword)));
  return SAFE_CAPABILITIES.filter((c) => sets.every((s) => s.has(c)));
}

/** Does this upstream connection have every capability the client was promised? */
export function keepsPromises(promised: readonly string[], upstream: readonly string[]): boolean {
  const have = new Set(upstream.map(keyword));
  return promised.every((p) => have.has(keyword(p)));
}
