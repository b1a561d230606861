import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  keepsPromises,
  SAFE_CAPABILITIES,
  sharedCapabilities,
} from '../../../src/protocols/pop3/capabilities.js';
import { POP3_UPSTREAM_CAPS } from '../../integration/frontdoor/harness.js';

/** What Dovecot's POP3 says to CAPA after TLS (the front-door tests' stand-in upstream). */
const DOVECOT = POP3_UPSTREAM_CAPS;
/** A server without PIPELINING that lists its keywords in its own order and case, with arguments. */
const OTHER = ['SASL PLAIN XOAUTH2', 'uidl', 'EXPIRE 0', 'LOGIN-DELAY 300', 'Top', 'USER', 'STLS'];

describe('sharedCapabilities', () => {
  test('one upstream: only TOP, UIDL, PIPELINING, in a fixed order; never STLS, USER, SASL or RESP-CODES', () => {
    assert.deepEqual(sharedCapabilities([DOVECOT]), ['TOP', 'UIDL', 'PIPELINING']);
    assert.deepEqual(sharedCapabilities([[...DOVECOT].reverse()]), ['TOP', 'UIDL', 'PIPELINING']);
    assert.deepEqual(sharedCapabilities([OTHER]), ['TOP', 'UIDL'], 'case-insensitive keywords');
    assert.deepEqual(SAFE_CAPABILITIES, ['TOP', 'UIDL', 'PIPELINING']);
  });

  test('several upstreams: only what all of them have', () => {
    assert.deepEqual(sharedCapabilities([DOVECOT, OTHER]), ['TOP', 'UIDL']);
    assert.deepEqual(sharedCapabilities([OTHER, DOVECOT]), ['TOP', 'UIDL'], 'upstream order does not matter');
    assert.deepEqual(sharedCapabilities([DOVECOT, ['PIPELINING', 'USER']]), ['PIPELINING']);
    assert.deepEqual(
      sharedCapabilities([DOVECOT, ['USER', 'RESP-CODES']]),
      [],
      'nothing shared, nothing promised',
    );
  });

  test('an upstream not contacted yet, or none at all, allows nothing', () => {
    assert.deepEqual(sharedCapabilities([]), []);
    assert.deepEqual(sharedCapabilities([undefined]), []);
    assert.deepEqual(sharedCapabilities([DOVECOT, undefined]), []);
    assert.deepEqual(sharedCapabilities([undefined, DOVECOT]), []);
    assert.deepEqual(sharedCapabilities([DOVECOT, []]), [], 'an upstream with no capabilities');
  });

  test('a keyword is the whole first word: TOPX, UIDL-X and "X TOP" are not TOP or UIDL', () => {
    assert.deepEqual(sharedCapabilities([['TOPX', 'UIDL-X', 'X TOP', 'PIPELINING 1']]), ['PIPELINING']);
  });
});

describe('keepsPromises', () => {
  test('nothing promised: any upstream keeps it', () => {
    assert.equal(keepsPromises([], []), true);
    assert.equal(keepsPromises([], DOVECOT), true);
  });

  test('every promised keyword must be there, whatever the case or arguments', () => {
    const promised = sharedCapabilities([DOVECOT]);
    assert.equal(keepsPromises(promised, DOVECOT), true);
    assert.equal(keepsPromises(promised, ['pipelining', 'Uidl', 'TOP']), true);
    assert.equal(keepsPromises(['TOP', 'UIDL'], OTHER), true);
    assert.equal(keepsPromises(promised, OTHER), false, 'PIPELINING missing');
    assert.equal(
      keepsPromises(
        promised,
        DOVECOT.filter((c) => c !== 'TOP'),
      ),
      false,
    );
    assert.equal(keepsPromises(promised, []), false);
    assert.equal(keepsPromises(['TOP'], ['TOPX', 'X TOP']), false);
  });
});
