/**
 * The MIME work of Graph delivery, on bytes: recipients rewritten from the envelope, and for
 * messages too large for one request, attachments taken out of the tree to be uploaded apart.
 */

import type { Envelope } from '../transaction.js';
import { Base64Source, type ByteSource, decodeQuotedPrintable, rawSource } from './decode.js';
import {
  addressKey,
  CR,
  decodeEncodedWords,
  fieldValue,
  firstValue,
  type HeaderBlock,
  HT,
  LF,
  parseAddressList,
  parseStructured,
  readHeader,
  SP,
  withoutFields,
} from './headers.js';

const DASH = 0x2d;
/** Deeper nesting than any mail program writes: below it, a part is kept whole. */
const MAX_DEPTH = 32;

export interface MimePart {
  readonly start: number;
  readonly header: HeaderBlock;
  /** Just past the content (before the line ending that opens the next delimiter). */
  readonly end: number;
  /** Lower-cased `type/subtype` (text/plain when absent or malformed). */
  readonly type: string;
  readonly params: Map<string, string>;
  readonly disposition: string | undefined;
  readonly dispositionParams: Map<string, string>;
  /** Lower-cased Content-Transfer-Encoding (7bit when absent). */
  readonly encoding: string;
  /** Content-ID without the angle brackets. */
  readonly contentId: string | undefined;
  /** Body parts of a multipart, with the byte where each one's delimiter (its line ending) starts. */
  readonly children: { part: MimePart; delimiterStart: number }[];
  /** Boundary of a multipart whose body was read. */
  readonly boundary: string | undefined;
  /** Why a part that calls itself multipart was kept whole (no boundary, no delimiter). */
  readonly malformed: string | undefined;
}

export interface ParsedMessage {
  readonly buf: Buffer;
  readonly root: MimePart;
}

export function parseMessage(buf: Buffer): ParsedMessage {
  return { buf, root: parsePart(buf, 0, buf.length, 0) };
}

function parsePart(buf: Buffer, start: number, end: number, depth: number): MimePart {
  const header = readHeader(buf, start, end);
  const ct = parseStructured(firstValue(buf, header, 'content-type') ?? 'text/plain');
  const type = /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+$/.test(ct.value) ? ct.value : 'text/plain';
  const cd = firstValue(buf, header, 'content-disposition');
  const disp = cd === undefined ? undefined : parseStructured(cd);
  const cid = firstValue(buf, header, 'content-id');
  const base = {
    start,
    header,
    end,
    type,
    params: ct.params,
    disposition: disp?.value || undefined,
    dispositionParams: disp?.params ?? new Map<string, string>(),
    encoding: (firstValue(buf, header, 'content-transfer-encoding') ?? '7bit').toLowerCase(),
    contentId: cid ? cid.replace(/^<|>$/g, '').trim() || undefined : undefined,
  };
  if (!type.startsWith('multipart/'))
    return { ...base, children: [], boundary: undefined, malformed: undefined };
  const boundary = ct.params.get('boundary');
  if (!boundary)
    return { ...base, children: [], boundary: undefined, malformed: 'multipart without a boundary' };
  if (depth >= MAX_DEPTH)
    return { ...base, children: [], boundary: undefined, malformed: 'multipart nested too deep' };
  const delimiters = findDelimiters(buf, header.bodyStart, end, Buffer.from(`--${boundary}`, 'latin1'));
  if (delimiters.length === 0) {
    return { ...base, children: [], boundary: undefined, malformed: 'no boundary delimiter in the body' };
  }
  const children: MimePart['children'] = [];
  for (let k = 0; k < delimiters.length; k++) {
    const d = delimiters[k]!;
    if (d.close) break;
    const partEnd = delimiters[k + 1]?.start ?? end;
    children.push({ part: parsePart(buf, d.next, partEnd, depth + 1), delimiterStart: d.start });
  }
  if (children.length === 0) {
    return { ...base, children: [], boundary: undefined, malformed: 'multipart with no body part' };
  }
  return { ...base, children, boundary, malformed: undefined };
}

interface Delimiter {
  /** Start of the line ending before `--boundary` (or of the line when the body starts with it). */
  start: number;
  /** First byte after the delimiter line. */
  next: number;
  close: boolean;
}

/** Delimiter lines (RFC 2046 §5.1.1): `--boundary` at a line start, then `--`, blanks, line end. */
function findDelimiters(buf: Buffer, start: number, end: number, delim: Buffer): Delimiter[] {
  const out: Delimiter[] = [];
  let from = start;
  while (from < end) {
    const p = buf.indexOf(delim, from);
    if (p === -1 || p + delim.length > end) break;
    from = p + 1;
    if (p !== start && buf[p - 1] !== LF) continue;
    let q = p + delim.length;
    const close = buf[q] === DASH && buf[q + 1] === DASH;
    if (close) q += 2;
    while (q < end && (buf[q] === SP || buf[q] === HT)) q++;
    let next: number;
    if (q >= end) next = end;
    else if (buf[q] === LF) next = q + 1;
    else if (buf[q] === CR && buf[q + 1] === LF) next = q + 2;
    else if (close) next = q;
    else continue;
    const lineStart = p === start ? p : buf[p - 2] === CR && p - 2 >= start ? p - 2 : p - 1;
    out.push({ start: lineStart, next, close });
    if (close) break;
    from = next;
  }
  return out;
}

export type RecipientRewrite =
  | { readonly ok: true; readonly header: Buffer; readonly bcc: readonly string[] }
  | { readonly ok: false; readonly reason: string };

/**
 * The message's top header with recipients set by the envelope: Bcc rebuilt from the envelope
 * recipients that To/Cc do not name; a To/Cc address outside the envelope refuses the message,
 * because Graph delivers to every address in the header.
 */
export function rewriteRecipients(msg: ParsedMessage, envelope: Envelope): RecipientRewrite {
  const { buf, root } = msg;
  const block = root.header;
  const named = new Set<string>();
  for (const f of block.fields) {
    if (f.name !== 'to' && f.name !== 'cc') continue;
    for (const a of parseAddressList(fieldValue(buf, f))) {
      const key = addressKey(a);
      if (!envelope.recipients.some((r) => addressKey(r) === key)) {
        return {
          ok: false,
          reason: `${f.name === 'to' ? 'To' : 'Cc'} address ${printable(a)} is not a recipient of this transaction (RCPT TO), and Microsoft Graph would deliver to it`,
        };
      }
      named.add(key);
    }
  }
  const bcc: string[] = [];
  const seen = new Set<string>();
  for (const r of envelope.recipients) {
    const key = addressKey(r);
    if (named.has(key) || seen.has(key)) continue;
    seen.add(key);
    bcc.push(r);
  }
  const kept = withoutFields(buf, block, ['bcc'], root.start);
  const eol = block.eol;
  const last = kept.at(-1);
  if (last && last.length > 0 && last[last.length - 1] !== LF) kept.push(Buffer.from(eol, 'latin1'));
  if (bcc.length > 0) kept.push(Buffer.from(foldAddressField('Bcc', bcc, eol), 'utf8'));
  return { ok: true, header: Buffer.concat(kept), bcc };
}

/** `Name: a, b, …` folded before 78 columns where possible. */
function foldAddressField(name: string, addrs: readonly string[], eol: string): string {
  let out = `${name}: `;
  let col = out.length;
  addrs.forEach((a, i) => {
    const piece = i < addrs.length - 1 ? `${a},` : a;
    if (i > 0) {
      if (col + 1 + piece.length > 78) {
        out += `${eol} `;
        col = 1;
      } else {
        out += ' ';
        col++;
      }
    }
    out += piece;
    col += piece.length;
  });
  return out + eol;
}

function printable(s: string): string {
  const t = s.replace(/[\x00-\x1f\x7f]/g, '');
  return t.length > 100 ? `${t.slice(0, 100)}…` : t;
}

export interface MimeAttachment {
  /** Decoded file name (RFC 2231 and encoded words understood). */
  readonly name: string;
  readonly contentType: string;
  readonly isInline: boolean;
  readonly contentId: string | undefined;
  /** The decoded content, read in pieces. */
  readonly content: ByteSource;
}

export interface StrippedMessage {
  /** The message after its top header, with the attachment parts removed: still valid MIME. */
  readonly body: Buffer[];
  readonly attachments: MimeAttachment[];
  /** Why nothing could be taken out (not multipart, malformed), for logs and replies. */
  readonly note: string | undefined;
}

/** Takes the attachment leaves out of the message tree; never throws. */
export function stripAttachments(msg: ParsedMessage): StrippedMessage {
  const { buf, root } = msg;
  const edits: { from: number; to: number; insert?: Buffer }[] = [];
  const attachments: MimeAttachment[] = [];
  const walk = (part: MimePart) => {
    const kids = part.children;
    let removed = 0;
    for (const [k, { part: child, delimiterStart }] of kids.entries()) {
      if (child.children.length > 0) {
        walk(child);
        continue;
      }
      const kind = attachmentKind(child, part.type);
      if (!kind) continue;
      attachments.push(toAttachment(buf, child, kind === 'inline', attachments.length + 1));
      edits.push({ from: delimiterStart, to: kids[k + 1]?.delimiterStart ?? child.end });
      removed++;
    }
    if (removed === kids.length && kids.length > 0) {
      // A multipart needs one body part: an empty text part stands in.
      const first = kids[0]!;
      const eol = part.header.eol;
      const lead = first.delimiterStart === part.header.bodyStart ? '' : eol;
      const insert = Buffer.from(
        `${lead}--${part.boundary}${eol}Content-Type: text/plain; charset=us-ascii${eol}${eol}`,
        'latin1',
      );
      const e = edits.find((x) => x.from === first.delimiterStart);
      if (e) e.insert = insert;
    }
  };
  walk(root);
  const body: Buffer[] = [];
  let pos = root.header.headerEnd;
  edits.sort((a, b) => a.from - b.from);
  for (const e of edits) {
    if (e.from > pos) body.push(buf.subarray(pos, e.from));
    if (e.insert) body.push(e.insert);
    pos = Math.max(pos, e.to);
  }
  if (pos < buf.length) body.push(buf.subarray(pos));
  const note =
    attachments.length > 0
      ? undefined
      : (root.malformed ?? (root.children.length === 0 ? 'not a multipart message' : 'no attachments'));
  return { body, attachments, note };
}

function attachmentKind(p: MimePart, parentType: string): 'file' | 'inline' | undefined {
  const textBody = p.type === 'text/plain' || p.type === 'text/html';
  if (p.disposition === 'attachment') return 'file';
  if (p.contentId && !textBody && (p.disposition === 'inline' || parentType === 'multipart/related'))
    return 'inline';
  if (!textBody && parentType === 'multipart/mixed' && fileName(p) !== undefined) return 'file';
  return undefined;
}

function fileName(p: MimePart): string | undefined {
  const n = p.dispositionParams.get('filename') ?? p.params.get('name');
  return n === undefined ? undefined : decodeEncodedWords(n);
}

function toAttachment(buf: Buffer, p: MimePart, isInline: boolean, n: number): MimeAttachment {
  const start = p.header.bodyStart;
  const end = Math.max(start, p.end);
  let content: ByteSource;
  if (p.encoding === 'base64') content = new Base64Source(buf, start, end);
  else if (p.encoding === 'quoted-printable') {
    const bytes = decodeQuotedPrintable(buf, start, end);
    content = rawSource(bytes, 0, bytes.length);
  } else content = rawSource(buf, start, end);
  const name = (fileName(p) ?? '').replace(/[\x00-\x1f\x7f]/g, '').trim();
  return {
    name: name || (p.type === 'message/rfc822' ? `message-${n}.eml` : `attachment-${n}`),
    contentType: p.type,
    isInline,
    contentId: p.contentId,
    content,
  };
}
