import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isHttpRequestLine } from '../../../src/net/policy.js';
import { decodeBase64, decodeLoginResponse, parsePlain } from '../../../src/sasl/server.js';

test('decodeBase64 is strict: whole quads, padding only at the end, no stray characters', () => {
  assert.equal(decodeBase64('YWxpY2U=')?.toString(), 'alice');
  assert.equal(decodeBase64('')?.length, 0);
  for (const bad of ['YWxpY2U', 'YW=xpY2U', 'YWxp Y2U=', 'YWxpY2U*', '====', 'YQ===']) {
    assert.equal(decodeBase64(bad), null, bad);
  }
});

test('parsePlain: authzid empty or equal to authcid; malformed messages are told apart', () => {
  assert.deepEqual(parsePlain(Buffer.from('\0alice\0pw')), { ok: true, authcid: 'alice', password: 'pw' });
  assert.deepEqual(parsePlain(Buffer.from('alice\0alice\0p\u00e4')), {
    ok: true,
    authcid: 'alice',
    password: 'p\u00e4',
  });
  assert.deepEqual(parsePlain(Buffer.from('admin\0alice\0pw')), { ok: false, why: 'authzid_mismatch' });
  for (const bad of ['alice\0pw', '\0\0pw', '\0a\0b\0c', 'no-nul']) {
    assert.deepEqual(parsePlain(Buffer.from(bad)), { ok: false, why: 'malformed' }, JSON.stringify(bad));
  }
  assert.deepEqual(
    parsePlain(Buffer.from([0, 0x61, 0, 0xff])),
    { ok: false, why: 'malformed' },
    'invalid UTF-8',
  );
});

test('decodeLoginResponse gives UTF-8 text or null', () => {
  assert.equal(decodeLoginResponse(Buffer.from('ZGF2ZQ==')), 'dave');
  assert.equal(decodeLoginResponse('/w=='), null);
});

test('isHttpRequestLine spots browsers and scanners, not IMAP', () => {
  for (const l of [
    'GET / HTTP/1.1',
    'POST /login HTTP/1.0',
    'CONNECT example.com:443 HTTP/1.1',
    'HEAD / HTTP/2',
  ]) {
    assert.ok(isHttpRequestLine(Buffer.from(l)), l);
  }
  for (const l of ['a GET / HTTP/1.1', 'GET', 'GET INBOX', 'a1 LOGIN GET HTTP/1.1', 'GET x HTTP/']) {
    assert.ok(!isHttpRequestLine(Buffer.from(l)), l);
  }
});
