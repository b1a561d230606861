import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  classifyAuthNo,
  decodeFailureContinuation,
  failureAck,
  isNotConnected,
  oauthbearerBlob,
  pickMechanism,
  xoauth2Blob,
} from '../../../src/sasl/client.js';

test('XOAUTH2 blob equals the example in Google’s XOAUTH2 documentation byte for byte', () => {
  assert.equal(
    xoauth2Blob('someuser@example.com', 'ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg'),
    'dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==',
  );
  assert.equal(
    xoauth2Blob('alice@example.com', 'ya29.a0AfH6SMBx'),
    'dXNlcj1hbGljZUBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LmEwQWZINlNNQngBAQ==',
  );
});

test('OAUTHBEARER blob has the RFC 7628 gs2 header with = and , escaped, host and port', () => {
  assert.equal(
    oauthbearerBlob('al=ice,x@example.com', 'tok123', 'imap.example.com', 993),
    'bixhPWFsPTNEaWNlPTJDeEBleGFtcGxlLmNvbSwBaG9zdD1pbWFwLmV4YW1wbGUuY29tAXBvcnQ9OTkzAWF1dGg9QmVhcmVyIHRvazEyMwEB',
  );
});

test('failure acknowledgement: empty line for XOAUTH2, a single 0x01 for OAUTHBEARER', () => {
  assert.equal(failureAck('xoauth2'), '');
  assert.deepEqual(Buffer.from(failureAck('oauthbearer'), 'base64'), Buffer.from([1]));
});

test('auto picks XOAUTH2 when advertised, OAUTHBEARER when only it is, explicit choice wins', () => {
  assert.equal(pickMechanism('auto', ['IMAP4rev1', 'AUTH=XOAUTH2', 'AUTH=OAUTHBEARER']), 'xoauth2');
  assert.equal(pickMechanism('auto', ['IMAP4rev1', 'auth=oauthbearer']), 'oauthbearer');
  assert.equal(pickMechanism('auto', ['IMAP4rev1']), 'xoauth2');
  assert.equal(pickMechanism('oauthbearer', ['AUTH=XOAUTH2']), 'oauthbearer');
});

const b64 = (s: string) => Buffer.from(s).toString('base64');

test('error continuation JSON: 401/invalid_token → rejected, 400/403 → authorization, 5xx/429 → unavailable', () => {
  // Gmail's and Dovecot's XOAUTH2 shape.
  assert.deepEqual(decodeFailureContinuation(b64('{"status":"401","schemes":"bearer","scope":"mail"}')), {
    reason: 'upstream_rejected',
    detail: 'json_401',
  });
  // Dovecot's OAUTHBEARER shape.
  assert.equal(decodeFailureContinuation(b64('{"status":"invalid_token"}')).reason, 'upstream_rejected');
  assert.equal(decodeFailureContinuation(b64('{"status":"400"}')).reason, 'authorization_failed');
  assert.equal(decodeFailureContinuation(b64('{"status":"403"}')).reason, 'authorization_failed');
  assert.equal(
    decodeFailureContinuation(b64('{"status":"insufficient_scope"}')).reason,
    'authorization_failed',
  );
  assert.equal(decodeFailureContinuation(b64('{"status":"503"}')).reason, 'upstream_unavailable');
  assert.equal(decodeFailureContinuation(b64('{"status":"429"}')).reason, 'upstream_unavailable');
  // Unknown statuses keep a bounded label; garbage does not throw.
  assert.equal(decodeFailureContinuation(b64('{"status":"user-chosen-text"}')).detail, 'json_other');
  assert.deepEqual(decodeFailureContinuation('!!not base64 json'), {
    reason: 'upstream_rejected',
    detail: 'json_unparsed',
  });
});

test('tagged NO: throttling wording and [UNAVAILABLE] are temporary, others keep the continuation reason', () => {
  const temp = [
    '[UNAVAILABLE] Temporary authentication failure.',
    'Request is throttled. Suggested Backoff Time: 1000 milliseconds',
    '[ALERT] Too many simultaneous connections. (Failure)',
    'Account exceeded command or bandwidth limits.',
  ];
  for (const t of temp) assert.equal(classifyAuthNo(t, undefined).reason, 'upstream_unavailable', t);
  assert.equal(classifyAuthNo('Request is throttled.', undefined).detail, 'throttled');
  assert.deepEqual(classifyAuthNo('AUTHENTICATE failed.', undefined), {
    reason: 'upstream_rejected',
    detail: 'no',
  });
  const fromJson = { reason: 'authorization_failed' as const, detail: 'json_400' as const };
  assert.deepEqual(
    classifyAuthNo('[AUTHENTICATIONFAILED] Invalid credentials (Failure)', fromJson),
    fromJson,
  );
});

test('Microsoft "authenticated but not connected" is recognised', () => {
  assert.ok(isNotConnected('User is authenticated but not connected.'));
  assert.ok(!isNotConnected('Command Error. 12'));
});
