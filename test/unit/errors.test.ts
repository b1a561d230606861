import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LOGIN_RESULTS, ProxyError } from '../../src/errors.js';
import { imapReply } from '../../src/protocols/imap/replies.js';

test('every failure reason maps to an RFC 5530 code and a text without secrets', () => {
  const codes = new Set([
    'AUTHENTICATIONFAILED',
    'PRIVACYREQUIRED',
    'LIMIT',
    'EXPIRED',
    'CONTACTADMIN',
    'UNAVAILABLE',
    'AUTHORIZATIONFAILED',
    'INUSE',
  ]);
  for (const r of LOGIN_RESULTS) {
    if (r === 'success') continue;
    const reply = imapReply(r);
    assert.ok(codes.has(reply.code), `${r} → ${reply.code}`);
    assert.match(reply.text, /^[\x20-\x7e]+$/);
  }
});

test('ProxyError keeps reason, detail and cause', () => {
  const cause = new Error('socket hang up');
  const e = new ProxyError('upstream_unavailable', 'dial failed', { cause, detail: 'connect_refused' });
  assert.equal(e.reason, 'upstream_unavailable');
  assert.equal(e.detail, 'connect_refused');
  assert.equal(e.cause, cause);
});
