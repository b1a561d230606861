import { literalMarker, type RawCommand } from './framing.js';

const SP = 0x20;
const DQUOTE = 0x22;
const BACKSLASH = 0x5c;
const LPAREN = 0x28;
const RPAREN = 0x29;
const LBRACE = 0x7b;
const PERCENT = 0x25;
const STAR = 0x2a;
const RBRACKET = 0x5d;
const PLUS = 0x2b;
const DEL = 0x7f;
/** Nesting bound for parenthesized lists (ID needs one level). */
const MAX_DEPTH = 8;

export type Token =
  | { readonly kind: 'atom'; readonly value: string }
  | { readonly kind: 'string'; readonly value: Buffer; readonly literal: boolean }
  | { readonly kind: 'nil' }
  | { readonly kind: 'list'; readonly items: readonly Token[] };

export interface ParsedCommand {
  readonly tag: string;
  /** Upper-cased command name. */
  readonly name: string;
  readonly args: readonly Token[];
}

/** A malformed command. The message is ours and never contains client bytes. */
export class ParseError extends Error {
  override readonly name = 'ParseError';
  constructor(
    message: string,
    /** The tag, when it could be read (so the reply can be tagged). */
    readonly tag: string | undefined,
  ) {
    super(message);
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Decodes UTF-8 strictly; null when the bytes are not valid UTF-8. */
export function decodeUtf8(b: Buffer): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

/** ATOM-CHAR: any byte but atom-specials; 8-bit bytes are allowed here and checked as UTF-8. */
export function isAtomChar(c: number): boolean {
  if (c <= 0x1f || c === DEL) return false;
  return !(
    c === SP ||
    c === LPAREN ||
    c === RPAREN ||
    c === LBRACE ||
    c === PERCENT ||
    c === STAR ||
    c === DQUOTE ||
    c === BACKSLASH ||
    c === RBRACKET
  );
}

function isTagChar(c: number): boolean {
  return (isAtomChar(c) || c === RBRACKET) && c !== PLUS && c < 0x80;
}

/** The value of an atom or string token as text; null for other tokens or invalid UTF-8. */
export function tokenText(t: Token | undefined): string | null {
  if (!t) return null;
  if (t.kind === 'atom') return t.value;
  if (t.kind === 'string') return decodeUtf8(t.value);
  return null;
}

/**
 * Reads `tag SP command *(SP arg)` from a command the splitter delivered. Literal markers at
 * the end of line parts become string tokens holding the literal's bytes.
 */
export function tokenize(cmd: RawCommand): ParsedCommand {
  const c = new Cursor(cmd);
  const tag = c.readWhile(isTagChar);
  if (tag.length === 0) throw new ParseError('Missing or invalid tag', undefined);
  const tagText = tag.toString('latin1');
  if (!c.eat(SP)) {
    if (c.atEnd()) throw new ParseError('Missing command', tagText);
    throw new ParseError('Missing or invalid tag', undefined);
  }
  const name = c.readWhile((b) => isAtomChar(b) && b < 0x80);
  if (name.length === 0) throw new ParseError('Missing or invalid command name', tagText);
  const args: Token[] = [];
  while (!c.atEnd()) {
    if (!c.eat(SP)) throw new ParseError('Expected a space between arguments', tagText);
    args.push(c.readToken(0, tagText));
  }
  return { tag: tagText, name: name.toString('latin1').toUpperCase(), args };
}

const NO_BYTES = Buffer.alloc(0);

class Cursor {
  private part = 0;
  private pos = 0;

  constructor(private readonly cmd: RawCommand) {}

  // Past the last part there is nothing to read: an empty line makes the next read fail as a parse error.
  private get line(): Buffer {
    return this.cmd.lines[this.part] ?? NO_BYTES;
  }

  atEnd(): boolean {
    return this.part === this.cmd.lines.length - 1 && this.pos >= this.line.length;
  }

  peek(): number | undefined {
    return this.line[this.pos];
  }

  eat(b: number): boolean {
    if (this.peek() !== b) return false;
    this.pos++;
    return true;
  }

  readWhile(ok: (b: number) => boolean): Buffer {
    const start = this.pos;
    const line = this.line;
    while (this.pos < line.length && ok(line[this.pos]!)) this.pos++;
    return line.subarray(start, this.pos);
  }

  readToken(depth: number, tag: string): Token {
    const b = this.peek();
    if (b === DQUOTE) return this.readQuoted(tag);
    if (b === LBRACE) return this.readLiteral(tag);
    if (b === LPAREN) return this.readList(depth, tag);
    const atom = this.readWhile(isAtomChar);
    if (atom.length === 0) throw new ParseError('Invalid argument', tag);
    const value = decodeUtf8(atom);
    if (value === null) throw new ParseError('Invalid UTF-8 in argument', tag);
    if (value.toUpperCase() === 'NIL') return { kind: 'nil' };
    return { kind: 'atom', value };
  }

  private readQuoted(tag: string): Token {
    const line = this.line;
    this.pos++;
    const out: number[] = [];
    while (this.pos < line.length) {
      const b = line[this.pos++]!;
      if (b === DQUOTE) return { kind: 'string', value: Buffer.from(out), literal: false };
      if (b === BACKSLASH) {
        const next = line[this.pos++];
        if (next !== DQUOTE && next !== BACKSLASH)
          throw new ParseError('Invalid escape in quoted string', tag);
        out.push(next);
        continue;
      }
      if (b === 0) throw new ParseError('NUL in quoted string', tag);
      out.push(b);
    }
    throw new ParseError('Unterminated quoted string', tag);
  }

  private readLiteral(tag: string): Token {
    const line = this.line;
    const marker = literalMarker(line.subarray(this.pos));
    const value = this.cmd.literals[this.part];
    // A marker is only a literal when it ends the line part (the splitter read its bytes).
    if (marker === null || marker === 'too_long' || marker.start !== 0 || value === undefined)
      throw new ParseError('Invalid literal', tag);
    this.part++;
    this.pos = 0;
    return { kind: 'string', value, literal: true };
  }

  private readList(depth: number, tag: string): Token {
    if (depth >= MAX_DEPTH) throw new ParseError('Lists nested too deeply', tag);
    this.pos++;
    const items: Token[] = [];
    if (this.eat(RPAREN)) return { kind: 'list', items };
    for (;;) {
      items.push(this.readToken(depth + 1, tag));
      if (this.eat(RPAREN)) return { kind: 'list', items };
      if (!this.eat(SP)) throw new ParseError('Malformed list', tag);
    }
  }
}
