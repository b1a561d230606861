/** Content-Transfer-Encoding decoders over byte ranges: a part's body is never turned into text. */

const CR = 0x0d;
const LF = 0x0a;
const EQ = 0x3d;

/** Base64 alphabet value of each byte; 255 for bytes skipped (line breaks, spaces, junk). */
const B64 = new Uint8Array(256).fill(255);
for (const [i, c] of [...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'].entries()) {
  B64[c.charCodeAt(0)] = i;
  // base64url too: some senders use it.
  if (c === '+') B64['-'.charCodeAt(0)] = i;
  if (c === '/') B64['_'.charCodeAt(0)] = i;
}

/** Decoded bytes of a part, readable in pieces so a large attachment is never held twice. */
export interface ByteSource {
  readonly size: number;
  /** `length` bytes from `offset` (fewer at the end). */
  read(offset: number, length: number): Buffer;
}

/** Raw bytes (7bit, 8bit, binary): a view, no copy. */
export function rawSource(buf: Buffer, start: number, end: number): ByteSource {
  const view = buf.subarray(start, end);
  return { size: view.length, read: (offset, length) => view.subarray(offset, offset + length) };
}

/**
 * Base64 tolerant of line breaks and stray bytes: skipped bytes are ignored, and `=` ends a
 * quantum (so concatenated base64 runs decode as a sender meant them).
 */
export class Base64Source implements ByteSource {
  readonly size: number;
  #src = 0;
  #out = 0;
  #acc = 0;
  #n = 0;
  /** Decoded bytes of a quantum that did not fit the last read (at most 2). */
  #pending: number[] = [];

  constructor(
    private readonly buf: Buffer,
    private readonly start: number,
    private readonly end: number,
  ) {
    this.#reset();
    this.size = this.#run(undefined, Number.POSITIVE_INFINITY);
    this.#reset();
  }

  read(offset: number, length: number): Buffer {
    if (offset < this.#out) this.#reset();
    if (this.#out < offset) {
      const scratch = Buffer.allocUnsafe(65_536);
      while (this.#out < offset) {
        if (this.#run(scratch, Math.min(scratch.length, offset - this.#out)) === 0) break;
      }
    }
    const out = Buffer.allocUnsafe(Math.max(0, Math.min(length, this.size - offset)));
    return out.subarray(0, this.#run(out, out.length));
  }

  #reset(): void {
    this.#src = this.start;
    this.#out = 0;
    this.#acc = 0;
    this.#n = 0;
    this.#pending = [];
  }

  /** Decodes up to `max` bytes into `into` (or only counts them when it is undefined); returns how many. */
  #run(into: Buffer | undefined, max: number): number {
    const { buf, end } = this;
    const pending = this.#pending;
    let i = this.#src;
    let acc = this.#acc;
    let n = this.#n;
    let w = 0;
    while (w < max && pending.length > 0) {
      const b = pending.shift()!;
      if (into) into[w] = b;
      w++;
    }
    // No closures here: captured counters would live on the heap and slow the loop several times.
    while (w < max) {
      let emit = 0;
      let bits = 0;
      if (i < end) {
        const c = buf[i++]!;
        const v = B64[c]!;
        if (v !== 255) {
          acc = (acc << 6) | v;
          if (++n === 4) {
            if (into !== undefined && w + 3 <= max) {
              into[w] = (acc >> 16) & 0xff;
              into[w + 1] = (acc >> 8) & 0xff;
              into[w + 2] = acc & 0xff;
              w += 3;
              acc = 0;
              n = 0;
              continue;
            }
            emit = 3;
            bits = acc;
          }
        } else if (c === EQ && n > 0) {
          emit = n - 1;
          bits = acc << (6 * (4 - n));
        }
        if (emit === 0 && n !== 4) {
          if (c === EQ) n = 0;
          continue;
        }
      } else if (n > 0) {
        // Unpadded tail.
        emit = n - 1;
        bits = acc << (6 * (4 - n));
      } else {
        break;
      }
      acc = 0;
      n = 0;
      for (let k = 0; k < emit; k++) {
        const b = (bits >> (16 - 8 * k)) & 0xff;
        if (w >= max) pending.push(b);
        else {
          if (into) into[w] = b;
          w++;
        }
      }
    }
    this.#src = i;
    this.#acc = acc;
    this.#n = n;
    this.#out += w;
    return w;
  }
}

/** Quoted-printable (RFC 2045 §6.7): soft breaks removed, `=XX` decoded, trailing blanks dropped. */
export function decodeQuotedPrintable(buf: Buffer, start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(end - start);
  let w = 0;
  let lineStart = 0;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    if (c === EQ) {
      const h = hex(buf[i + 1]);
      const l = hex(buf[i + 2]);
      if (i + 2 < end && h >= 0 && l >= 0) {
        out[w++] = (h << 4) | l;
        i += 2;
        lineStart = w;
        continue;
      }
      let j = i + 1;
      while (j < end && (buf[j] === 0x20 || buf[j] === 0x09)) j++;
      if (j >= end || buf[j] === LF || (buf[j] === CR && buf[j + 1] === LF)) {
        // Soft line break.
        i = j >= end ? end : buf[j] === CR ? j + 1 : j;
        lineStart = w;
        continue;
      }
      out[w++] = c;
    } else if (c === LF || (c === CR && buf[i + 1] === LF)) {
      // Blanks at a line's end were added in transport (RFC 2045 rule 3).
      while (w > lineStart && (out[w - 1] === 0x20 || out[w - 1] === 0x09)) w--;
      if (c === CR) {
        out[w++] = CR;
        i++;
      }
      out[w++] = LF;
      lineStart = w;
    } else {
      out[w++] = c;
    }
  }
  return out.subarray(0, w);
}

function hex(b: number | undefined): number {
  if (b === undefined) return -1;
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x41 && b <= 0x46) return b - 0x37;
  if (b >= 0x61 && b <= 0x66) return b - 0x57;
  return -1;
}

/** Base64 of several buffers as if they were one, into one Buffer (the request body). */
export function base64Of(parts: readonly Buffer[]): Buffer {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = Buffer.allocUnsafe(base64Length(total));
  let w = 0;
  let carry = Buffer.alloc(0);
  for (const p of parts) {
    let piece = p;
    if (carry.length > 0) {
      const need = 3 - carry.length;
      const head = Buffer.concat([carry, p.subarray(0, need)]);
      if (head.length < 3) {
        carry = head;
        continue;
      }
      w += out.write(head.toString('base64'), w, 'latin1');
      piece = p.subarray(need);
    }
    const whole = piece.length - (piece.length % 3);
    // 3 MB windows keep the temporary strings small.
    for (let o = 0; o < whole; o += 3_145_728) {
      w += out.write(piece.toString('base64', o, Math.min(whole, o + 3_145_728)), w, 'latin1');
    }
    carry = Buffer.from(piece.subarray(whole));
  }
  if (carry.length > 0) w += out.write(carry.toString('base64'), w, 'latin1');
  return out.subarray(0, w);
}

/** Length of the padded base64 of `n` bytes. */
export function base64Length(n: number): number {
  return Math.ceil(n / 3) * 4;
}
