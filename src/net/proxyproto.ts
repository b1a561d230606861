import { BlockList, isIPv4, isIPv6 } from 'node:net';

/** PROXY protocol v1 and v2 (haproxy.org/download/2.8/doc/proxy-protocol.txt). */

const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V1_MAX = 107;
const V2_FIXED = 16;
const LF = 0x0a;
const CR = 0x0d;
const V2_VERSION = 0x20;
const V2_CMD_LOCAL = 0x00;
const V2_CMD_PROXY = 0x01;
const V2_TCP4 = 0x11;
const V2_TCP6 = 0x21;

export interface ProxySource {
  readonly address: string;
  readonly port: number;
}

export type ProxyHeaderResult =
  | { readonly kind: 'incomplete' }
  | { readonly kind: 'invalid' }
  /** `source` is null for LOCAL / UNKNOWN headers: keep the peer's own address. */
  | { readonly kind: 'header'; readonly length: number; readonly source: ProxySource | null };

function isPrefixOf(buf: Buffer, of: Buffer): boolean {
  const n = Math.min(buf.length, of.length);
  return buf.subarray(0, n).equals(of.subarray(0, n));
}

/** True when the bytes so far could be the start of a PROXY header of either version. */
export function startsLikeProxyHeader(buf: Buffer): boolean {
  return buf.length > 0 && (isPrefixOf(buf, V1_PREFIX) || isPrefixOf(buf, V2_SIGNATURE));
}

export function parseProxyHeader(buf: Buffer, maxBytes = 536): ProxyHeaderResult {
  if (isPrefixOf(buf, V2_SIGNATURE))
    return buf.length < V2_FIXED ? { kind: 'incomplete' } : parseV2(buf, maxBytes);
  if (isPrefixOf(buf, V1_PREFIX))
    return buf.length < V1_PREFIX.length ? { kind: 'incomplete' } : parseV1(buf);
  return { kind: 'invalid' };
}

function port(s: string | undefined): number | null {
  if (s === undefined || s.length === 0 || s.length > 5) return null;
  for (const ch of s) if (ch < '0' || ch > '9') return null;
  const n = Number(s);
  return n <= 65535 ? n : null;
}

function parseV1(buf: Buffer): ProxyHeaderResult {
  const lf = buf.indexOf(LF);
  if (lf === -1) return buf.length >= V1_MAX ? { kind: 'invalid' } : { kind: 'incomplete' };
  if (lf + 1 > V1_MAX || lf === 0 || buf[lf - 1] !== CR) return { kind: 'invalid' };
  const fields = buf
    .subarray(0, lf - 1)
    .toString('latin1')
    .split(' ');
  const length = lf + 1;
  if (fields[1] === 'UNKNOWN') return { kind: 'header', length, source: null };
  if (fields.length !== 6) return { kind: 'invalid' };
  const [, proto, src = '', dst = '', sport, dport] = fields;
  const check = proto === 'TCP4' ? isIPv4 : proto === 'TCP6' ? isIPv6 : () => false;
  const sp = port(sport);
  if (!check(src) || !check(dst) || sp === null || port(dport) === null) return { kind: 'invalid' };
  return { kind: 'header', length, source: { address: canonicalAddress(src), port: sp } };
}

function ipv6(b: Buffer): string {
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(b.readUInt16BE(i).toString(16));
  return canonicalAddress(parts.join(':'));
}

/**
 * One spelling per address (RFC 5952: lower case, shortest, `::` for the longest zero run;
 * IPv4-mapped as dotted IPv4), the form Node gives socket addresses: one client is one
 * limiter key however its PROXY header wrote it.
 */
export function canonicalAddress(address: string): string {
  if (!isIPv6(address)) return address;
  const host = new URL(`http://[${address}]/`).hostname.slice(1, -1);
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(host);
  if (!mapped) return host;
  const hi = Number.parseInt(mapped[1] ?? '0', 16);
  const lo = Number.parseInt(mapped[2] ?? '0', 16);
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

function parseV2(buf: Buffer, maxBytes: number): ProxyHeaderResult {
  const verCmd = buf.readUInt8(12);
  const fam = buf.readUInt8(13);
  const len = buf.readUInt16BE(14);
  const length = V2_FIXED + len;
  if ((verCmd & 0xf0) !== V2_VERSION || length > maxBytes) return { kind: 'invalid' };
  const cmd = verCmd & 0x0f;
  if (cmd !== V2_CMD_LOCAL && cmd !== V2_CMD_PROXY) return { kind: 'invalid' };
  if (buf.length < length) return { kind: 'incomplete' };
  if (cmd === V2_CMD_LOCAL) return { kind: 'header', length, source: null };
  const body = buf.subarray(V2_FIXED, length);
  if (fam === V2_TCP4) {
    if (len < 12) return { kind: 'invalid' };
    const address = `${body[0]}.${body[1]}.${body[2]}.${body[3]}`;
    return { kind: 'header', length, source: { address, port: body.readUInt16BE(8) } };
  }
  if (fam === V2_TCP6) {
    if (len < 36) return { kind: 'invalid' };
    return {
      kind: 'header',
      length,
      source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
    };
  }
  // UNSPEC, UDP or UNIX: no usable TCP client address, keep the peer's.
  return { kind: 'header', length, source: null };
}

/** Strips the IPv4-mapped prefix Node reports on dual-stack sockets. */
export function plainAddress(address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

/** Trusted networks as a BlockList; entries are CIDRs ("10.0.0.0/8", "::1/128") or single IPs. */
export function trustList(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of cidrs) {
    const [net = '', bits] = entry.split('/');
    const type = isIPv6(net) ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(net, type);
    else list.addSubnet(net, Number(bits), type);
  }
  return list;
}

export function isTrusted(list: BlockList, address: string): boolean {
  const a = plainAddress(address);
  return list.check(a, isIPv6(a) ? 'ipv6' : 'ipv4');
}
