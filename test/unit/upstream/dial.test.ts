import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ProxyError } from '../../../src/errors.js';
import { mapDialError } from '../../../src/net/dial.js';

const withCode = (code: string) => Object.assign(new Error(code), { code });

test('socket and TLS errors map to upstream_unavailable with a bounded detail', () => {
  const cases: [string, string][] = [
    ['ECONNREFUSED', 'connect_refused'],
    ['ETIMEDOUT', 'connect_timeout'],
    ['EHOSTUNREACH', 'host_unreachable'],
    ['ENETUNREACH', 'host_unreachable'],
    ['ENOTFOUND', 'dns_failed'],
    ['ECONNRESET', 'connection_reset'],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'tls_verify'],
    ['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'tls_verify'],
    ['ERR_TLS_CERT_ALTNAME_INVALID', 'tls_verify'],
    ['CERT_HAS_EXPIRED', 'tls_verify'],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'tls_handshake'],
    ['EWHATEVER', 'connect_failed'],
  ];
  for (const [code, detail] of cases) {
    const e = mapDialError(withCode(code));
    assert.equal(e.reason, 'upstream_unavailable', code);
    assert.equal(e.detail, detail, code);
    assert.ok(!e.message.includes(code) || detail === code, 'message carries only the bounded detail');
  }
  const own = new ProxyError('timeout', 'x');
  assert.equal(mapDialError(own), own);
});
