/**
 * The SMTP extensions a front door may promise before login. Clients keep the EHLO reply they
 * got before AUTH for the whole session, so an extension is advertised only when every
 * upstream a login on this listener can reach has it, and SIZE never above the smallest.
 */
export const SAFE_EXTENSIONS = [
  'PIPELINING',
  '8BITMIME',
  'SIZE',
  'ENHANCEDSTATUSCODES',
  'SMTPUTF8',
  'CHUNKING',
  'DSN',
] as const;

/** `SIZE 35882577` → ['SIZE', '35882577']; keywords compare upper-case. */
function split(cap: string): [string, string] {
  const sp = cap.indexOf(' ');
  return sp === -1 ? [cap.toUpperCase(), ''] : [cap.slice(0, sp).toUpperCase(), cap.slice(sp + 1).trim()];
}

/** SIZE's limit in bytes: 0 (or absent) means no fixed limit (RFC 1870); anything else unreadable is NaN. */
function sizeOf(param: string): number {
  if (param === '') return 0;
  return /^\d{1,15}$/.test(param) ? Number(param) : Number.NaN;
}

function keywords(caps: readonly string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const c of caps) {
    const [k, v] = split(c);
    if (!m.has(k)) m.set(k, v);
  }
  return m;
}

/**
 * The safe extensions every known upstream shares, as EHLO lines (`SIZE n` with the smallest
 * limit). An upstream not contacted yet (undefined) allows nothing beyond the basics.
 */
export function sharedExtensions(upstreams: ReadonlyArray<readonly string[] | undefined>): string[] {
  if (upstreams.length === 0 || upstreams.some((u) => u === undefined)) return [];
  const maps = upstreams.map((u) => keywords(u ?? []));
  const out: string[] = [];
  for (const ext of SAFE_EXTENSIONS) {
    if (!maps.every((m) => m.has(ext))) continue;
    if (ext !== 'SIZE') {
      out.push(ext);
      continue;
    }
    const all = maps.map((m) => sizeOf(m.get('SIZE') ?? ''));
    // A limit that cannot be read cannot be promised safely: no SIZE at all.
    if (all.some(Number.isNaN)) continue;
    const limits = all.filter((n) => n > 0);
    out.push(limits.length === 0 ? 'SIZE' : `SIZE ${Math.min(...limits)}`);
  }
  return out;
}

/** Does this upstream connection keep every promise in `advertised` (the EHLO lines a client got)? */
export function keepsPromises(advertised: readonly string[], upstream: readonly string[]): boolean {
  const have = keywords(upstream);
  for (const a of advertised) {
    const [k, v] = split(a);
    if (!have.has(k)) return false;
    if (k === 'SIZE') {
      const promised = sizeOf(v);
      const limit = sizeOf(have.get('SIZE') ?? '');
      if (Number.isNaN(limit)) return false;
      // A promise of "no fixed limit" needs an upstream without one; else the upstream's limit must be at least ours.
      if (limit > 0 && (promised === 0 || promised > limit)) return false;
    }
  }
  return true;
}
