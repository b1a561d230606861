/** RFC 5322 / MIME header blocks read straight from the message bytes. */

export const CR = 0x0d;
export const LF = 0x0a;
export const SP = 0x20;
export const HT = 0x09;
const COLON = 0x3a;
/** More fields than any real header has: the rest is read as body (bounds the work on junk). */
const MAX_FIELDS = 5_000;

export interface HeaderField {
  /** Lower-cased field name. */
  readonly name: string;
  /** First byte of the field's first line. */
  readonly start: number;
  /** Just past the line ending of its last (folded) line. */
  end: number;
  /** Just past the colon. */
  readonly valueStart: number;
}

export interface HeaderBlock {
  readonly fields: HeaderField[];
  /** Just past the last header line (where the blank line starts). */
  readonly headerEnd: number;
  /** Just past the blank line: the first body byte. */
  readonly bodyStart: number;
  /** Line ending the block uses (CRLF unless its first line ends in a bare LF). */
  readonly eol: '\r\n' | '\n';
}

/** Splits [start, end) of `buf` into header fields and body; never throws. */
export function readHeader(buf: Buffer, start = 0, end = buf.length): HeaderBlock {
  const fields: HeaderField[] = [];
  let eol: '\r\n' | '\n' | undefined;
  let pos = start;
  let current: HeaderField | undefined;
  while (pos < end) {
    const lf = buf.indexOf(LF, pos);
    const next = lf === -1 || lf >= end ? end : lf + 1;
    const contentEnd =
      next > pos && buf[next - 1] === LF
        ? next - 2 >= pos && buf[next - 2] === CR
          ? next - 2
          : next - 1
        : next;
    if (eol === undefined && next <= end && buf[next - 1] === LF)
      eol = contentEnd === next - 2 ? '\r\n' : '\n';
    if (contentEnd === pos) return { fields, headerEnd: pos, bodyStart: next, eol: eol ?? '\r\n' };
    const first = buf[pos];
    if (current && (first === SP || first === HT)) {
      current.end = next;
    } else {
      const at = buf.subarray(pos, contentEnd).indexOf(COLON);
      // A line that is no field (or one field too many) starts the body, as lenient readers do.
      if (at <= 0 || fields.length >= MAX_FIELDS)
        return { fields, headerEnd: pos, bodyStart: pos, eol: eol ?? '\r\n' };
      current = {
        name: buf
          .toString('latin1', pos, pos + at)
          .trim()
          .toLowerCase(),
        start: pos,
        end: next,
        valueStart: pos + at + 1,
      };
      fields.push(current);
    }
    pos = next;
  }
  return { fields, headerEnd: end, bodyStart: end, eol: eol ?? '\r\n' };
}

/** A field's value, unfolded, as UTF-8 text (header values are short; bodies are never decoded). */
export function fieldValue(buf: Buffer, f: HeaderField): string {
  return buf
    .toString('utf8', f.valueStart, f.end)
    .replace(/\r?\n(?=[ \t])/g, '')
    .replace(/\r?\n$/, '')
    .trim();
}

/** The first field of that name, unfolded, or undefined. */
export function firstValue(buf: Buffer, block: HeaderBlock, name: string): string | undefined {
  const f = block.fields.find((x) => x.name === name);
  return f ? fieldValue(buf, f) : undefined;
}

export interface Structured {
  /** The value before the first ';', lower-cased (e.g. 'multipart/mixed', 'attachment'). */
  readonly value: string;
  /** Parameters by lower-cased name, RFC 2231 continuations joined and decoded. */
  readonly params: Map<string, string>;
}

/** Parses `type/subtype; a=b; c="d"` (Content-Type, Content-Disposition), comments skipped. */
export function parseStructured(text: string): Structured {
  const pieces: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      const q = readQuoted(text, i);
      cur += `"${q.text.replace(/["\\]/g, '\\$&')}"`;
      i = q.end - 1;
    } else if (c === '(' && /(^|\s)$/.test(cur)) {
      // Only where a comment can start: `name=foo(1).pdf` unquoted is common and kept.
      i = skipComment(text, i) - 1;
    } else if (c === ';') {
      pieces.push(cur);
      cur = '';
    } else {
      cur += c;
    }
  }
  pieces.push(cur);
  const value = (pieces.shift() ?? '').trim().toLowerCase();
  const raw = new Map<string, { index: number; encoded: boolean; text: string }[]>();
  for (const p of pieces) {
    const eq = p.indexOf('=');
    if (eq === -1) continue;
    const name = p.slice(0, eq).trim().toLowerCase();
    let v = p.slice(eq + 1).trim();
    if (v.startsWith('"')) v = readQuoted(v, 0).text;
    const m = /^([^*]+)(?:\*(\d+))?(\*)?$/.exec(name);
    if (!m) continue;
    const base = m[1]!;
    const list = raw.get(base) ?? [];
    list.push({ index: m[2] === undefined ? -1 : Number(m[2]), encoded: m[3] === '*', text: v });
    raw.set(base, list);
  }
  const params = new Map<string, string>();
  for (const [name, segs] of raw) params.set(name, joinRfc2231(segs));
  return { value, params };
}

/** RFC 2231: `name*0*=utf-8''%E2%82%AC; name*1=...` into one decoded string. */
function joinRfc2231(segs: { index: number; encoded: boolean; text: string }[]): string {
  // A plain `name=` and a `name*=` side by side: the extended one is the better name.
  const extended = segs.filter((s) => s.index !== -1 || s.encoded);
  const use = extended.length > 0 ? extended : segs;
  use.sort((a, b) => a.index - b.index);
  let charset = 'utf-8';
  const bytes: Buffer[] = [];
  use.forEach((s, n) => {
    let t = s.text;
    if (s.encoded) {
      if (n === 0) {
        const m = /^([^']*)'[^']*'(.*)$/s.exec(t);
        if (m) {
          charset = m[1] || 'us-ascii';
          t = m[2]!;
        }
      }
      bytes.push(percentDecode(t));
    } else {
      bytes.push(Buffer.from(t, 'utf8'));
    }
  });
  return decodeCharset(Buffer.concat(bytes), charset);
}

function percentDecode(s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x25 && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      out.push(Number.parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else {
      out.push(...Buffer.from(s[i]!, 'utf8'));
    }
  }
  return Buffer.from(out);
}

/** Bytes in a named charset; unknown charsets read as Latin-1 so a name is never lost. */
export function decodeCharset(bytes: Buffer, charset: string): string {
  try {
    return new TextDecoder(charset.trim().toLowerCase() || 'utf-8').decode(bytes);
  } catch {
    return bytes.toString('latin1');
  }
}

/** RFC 2047 encoded words (`=?utf-8?B?...?=`) decoded; whitespace between two of them dropped. */
export function decodeEncodedWords(text: string): string {
  const WORD = /=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=/g;
  return text
    .replace(/(=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=)\s+(?==\?)/g, '$1')
    .replace(WORD, (_all, cs: string, enc: string, data: string) => {
      const charset = cs.split('*')[0] ?? 'utf-8';
      const bytes =
        enc.toLowerCase() === 'b'
          ? Buffer.from(data, 'base64')
          : Buffer.from(
              data
                .replace(/_/g, ' ')
                .replace(/=([0-9a-fA-F]{2})/g, (_m, h: string) =>
                  String.fromCharCode(Number.parseInt(h, 16)),
                ),
              'latin1',
            );
      return decodeCharset(bytes, charset);
    });
}

function readQuoted(text: string, at: number): { text: string; end: number } {
  let out = '';
  let i = at + 1;
  for (; i < text.length; i++) {
    const c = text[i]!;
    if (c === '\\' && i + 1 < text.length) out += text[++i];
    else if (c === '"') return { text: out, end: i + 1 };
    else out += c;
  }
  return { text: out, end: i };
}

function skipComment(text: string, at: number): number {
  let depth = 0;
  for (let i = at; i < text.length; i++) {
    const c = text[i];
    if (c === '\\') i++;
    else if (c === '(') depth++;
    else if (c === ')' && --depth === 0) return i + 1;
  }
  return text.length;
}

/**
 * The addr-specs of an RFC 5322 address list (To/Cc/Bcc): display names, quoted strings,
 * comments, routes and groups (`undisclosed-recipients:;`) understood; encoded words left as they are.
 */
export function parseAddressList(text: string): string[] {
  const out: string[] = [];
  let words = '';
  let angle: string | undefined;
  const flush = () => {
    const a = (angle ?? words).trim();
    if (a !== '') out.push(a);
    words = '';
    angle = undefined;
  };
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '(') {
      i = skipComment(text, i) - 1;
    } else if (c === '"') {
      const q = readQuoted(text, i);
      words += `"${q.text}"`;
      i = q.end - 1;
    } else if (c === '<') {
      let inner = '';
      let j = i + 1;
      for (; j < text.length && text[j] !== '>'; j++) {
        const d = text[j]!;
        if (d === '"') {
          const q = readQuoted(text, j);
          inner += `"${q.text}"`;
          j = q.end - 1;
        } else if (d === '(') {
          j = skipComment(text, j) - 1;
        } else if (!/\s/.test(d)) {
          inner += d;
        }
      }
      // A source route `<@a,@b:user@c>` names user@c.
      angle = inner.slice(inner.lastIndexOf(':') + 1);
      i = j;
    } else if (c === ',' || c === ';') {
      flush();
    } else if (c === ':') {
      // A group's display name: its members follow.
      words = '';
      angle = undefined;
    } else if (c === '[') {
      const close = text.indexOf(']', i);
      const j = close === -1 ? text.length : close + 1;
      words += text.slice(i, j);
      i = j - 1;
    } else if (!/\s/.test(c)) {
      words += c;
    }
  }
  flush();
  return out;
}

/** Comparable form of an address: lower case, a quoted local part that needs no quotes unquoted. */
export function addressKey(addr: string): string {
  const a = addr.trim().replace(/^<|>$/g, '');
  const m = /^"([^"\\]*)"(@.*)$/.exec(a);
  const plain = m && /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(m[1]!) ? `${m[1]}${m[2]}` : a;
  return plain.toLowerCase();
}

/** Header bytes [0, headerEnd) without the named fields. */
export function withoutFields(
  buf: Buffer,
  block: HeaderBlock,
  names: readonly string[],
  start = 0,
): Buffer[] {
  const out: Buffer[] = [];
  let pos = start;
  for (const f of block.fields) {
    if (!names.includes(f.name)) continue;
    if (f.start > pos) out.push(buf.subarray(pos, f.start));
    pos = f.end;
  }
  if (block.headerEnd > pos) out.push(buf.subarray(pos, block.headerEnd));
  return out;
}
