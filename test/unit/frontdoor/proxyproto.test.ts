import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  canonicalAddress,
  isTrusted,
  parseProxyHeader,
  startsLikeProxyHeader,
  trustList,
} from '../../../src/net/proxyproto.js';
import { proxyV2Header as v2 } from '../../helpers/imap-client.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

test('v1 TCP4 and TCP6 headers give the client address and the header length', () => {
  const h = Buffer.from('PROXY TCP4 203.0.113.7 192.0.2.1 51234 143\r\nrest');
  assert.deepEqual(parseProxyHeader(h), {
    kind: 'header',
    length: h.length - 4,
    source: { address: '203.0.113.7', port: 51234 },
  });
  const h6 = Buffer.from('PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n');
  assert.deepEqual(parseProxyHeader(h6), {
    kind: 'header',
    length: h6.length,
    source: { address: '2001:db8::7', port: 1 },
  });
  assert.deepEqual(parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n')), {
    kind: 'header',
    length: 15,
    source: null,
  });
});

test('v1: incomplete until CRLF, invalid when malformed or too long', () => {
  assert.equal(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4')).kind, 'incomplete');
  assert.equal(parseProxyHeader(Buffer.from('PROX')).kind, 'incomplete');
  for (const bad of [
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n',
    'PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n',
    'PROXY TCP4 ::1 ::1 1 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n',
    'PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n',
    `PROXY TCP4 ${'1'.repeat(120)}`,
    'HELLO\r\n',
  ]) {
    assert.equal(parseProxyHeader(Buffer.from(bad)).kind, 'invalid', bad);
  }
});

test('v2 PROXY for IPv4 and IPv6, LOCAL keeps the peer address, split input is incomplete', () => {
  const h = v2({ ip: [198, 51, 100, 9], port: 4444 });
  assert.deepEqual(parseProxyHeader(Buffer.concat([h, Buffer.from('x')])), {
    kind: 'header',
    length: 28,
    source: { address: '198.51.100.9', port: 4444 },
  });
  for (let i = 1; i < h.length; i++)
    assert.equal(parseProxyHeader(h.subarray(0, i)).kind, 'incomplete', `at ${i}`);
  const h6 = v2({ ip: [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 5], port: 7 }, 0x21);
  const r6 = parseProxyHeader(h6);
  assert.equal(r6.kind === 'header' && r6.source?.address, '2001:db8::5');
  assert.deepEqual(parseProxyHeader(v2(null)), { kind: 'header', length: 16, source: null });
  const badVersion = Buffer.from(h);
  badVersion[12] = 0x11;
  assert.equal(parseProxyHeader(badVersion).kind, 'invalid');
  const huge = Buffer.from(h);
  huge.writeUInt16BE(60000, 14);
  assert.equal(parseProxyHeader(huge).kind, 'invalid', 'over the size limit');
});

test('startsLikeProxyHeader recognises both versions, not IMAP', () => {
  assert.ok(startsLikeProxyHeader(Buffer.from('PROXY TCP4')));
  assert.ok(startsLikeProxyHeader(SIG));
  assert.ok(!startsLikeProxyHeader(Buffer.from('a1 LOGIN')));
});

test('trusted networks: CIDRs and single addresses, IPv4-mapped IPv6 peers', () => {
  const list = trustList(['10.0.0.0/8', '192.0.2.5', 'fd00::/8']);
  assert.ok(isTrusted(list, '10.1.2.3'));
  assert.ok(isTrusted(list, '::ffff:10.1.2.3'));
  assert.ok(isTrusted(list, '192.0.2.5'));
  assert.ok(isTrusted(list, 'fd00::1'));
  assert.ok(!isTrusted(list, '192.0.2.6'));
  assert.ok(!isTrusted(list, '127.0.0.1'));
});

test('IPv6 client addresses are canonical, so one client is one limiter key (v1 and v2 alike)', () => {
  const header6 = (addr: number[]) => {
    const body = Buffer.alloc(36);
    Buffer.from(addr).copy(body, 0);
    body.writeUInt16BE(4321, 32);
    const head = Buffer.from([
      0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x21, 0, 36,
    ]);
    return parseProxyHeader(Buffer.concat([head, body]), 536);
  };
  const doc = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 0x07];
  const r = header6(doc);
  assert.equal(r.kind === 'header' ? r.source?.address : r.kind, '2001:db8::7');
  const mapped = [...Array(10).fill(0), 0xff, 0xff, 192, 0, 2, 9];
  const m = header6(mapped);
  assert.equal(m.kind === 'header' ? m.source?.address : m.kind, '192.0.2.9');
  const v1 = parseProxyHeader(Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:7 2001:db8::1 1 2\r\n'), 536);
  assert.equal(v1.kind === 'header' ? v1.source?.address : v1.kind, '2001:db8::7');
  assert.equal(canonicalAddress('2001:0db8:0000::0007'), '2001:db8::7');
  assert.equal(canonicalAddress('192.0.2.1'), '192.0.2.1');
});
