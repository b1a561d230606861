import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { keepsPromises, sharedExtensions } from '../../../src/protocols/smtp/extensions.js';
import { SMTP_UPSTREAM_CAPS } from '../../integration/frontdoor/harness.js';

/** What Dovecot submission advertises after STARTTLS (the front-door tests' stand-in upstream). */
const DOVECOT = SMTP_UPSTREAM_CAPS;
/** What smtp.office365.com advertises after STARTTLS. */
const OFFICE365 = [
  'SIZE 157286400',
  'PIPELINING',
  'DSN',
  'ENHANCEDSTATUSCODES',
  'AUTH LOGIN XOAUTH2',
  '8BITMIME',
  'BINARYMIME',
  'CHUNKING',
  'SMTPUTF8',
];

describe('sharedExtensions', () => {
  test('one upstream: only the safe extensions, in a fixed order; never AUTH, BURL, STARTTLS or BINARYMIME', () => {
    assert.deepEqual(sharedExtensions([DOVECOT]), [
      'PIPELINING',
      '8BITMIME',
      'SIZE 40000000',
      'ENHANCEDSTATUSCODES',
      'CHUNKING',
    ]);
    assert.deepEqual(sharedExtensions([[...OFFICE365, 'STARTTLS', 'XCLIENT ADDR', 'VRFY']]), [
      'PIPELINING',
      '8BITMIME',
      'SIZE 157286400',
      'ENHANCEDSTATUSCODES',
      'SMTPUTF8',
      'CHUNKING',
      'DSN',
    ]);
  });

  test('several upstreams: what all of them have, SIZE the smallest', () => {
    assert.deepEqual(sharedExtensions([OFFICE365, DOVECOT]), [
      'PIPELINING',
      '8BITMIME',
      'SIZE 40000000',
      'ENHANCEDSTATUSCODES',
      'CHUNKING',
    ]);
    assert.deepEqual(sharedExtensions([DOVECOT, ['PIPELINING', 'SIZE 10485760', 'DSN']]), [
      'PIPELINING',
      'SIZE 10485760',
    ]);
    assert.deepEqual(sharedExtensions([DOVECOT, ['HELP']]), [], 'nothing shared, nothing promised');
  });

  test('an upstream not contacted yet, or none at all, allows nothing', () => {
    assert.deepEqual(sharedExtensions([]), []);
    assert.deepEqual(sharedExtensions([undefined]), []);
    assert.deepEqual(sharedExtensions([DOVECOT, undefined]), []);
    assert.deepEqual(sharedExtensions([DOVECOT, []]), [], 'an upstream with no extensions');
  });

  test('keywords compare case-insensitively and come out upper-case; the first of a repeated keyword counts', () => {
    assert.deepEqual(sharedExtensions([['pipelining', 'Size 100', 'SIZE 5', '8bitmime']]), [
      'PIPELINING',
      '8BITMIME',
      'SIZE 100',
    ]);
  });

  test('SIZE without a fixed limit (absent, 0) gives way to any fixed one', () => {
    assert.deepEqual(sharedExtensions([['SIZE']]), ['SIZE']);
    assert.deepEqual(sharedExtensions([['SIZE 0'], ['SIZE']]), ['SIZE']);
    assert.deepEqual(sharedExtensions([['SIZE'], ['SIZE 2048'], ['SIZE 0']]), ['SIZE 2048']);
  });

  test('an unreadable SIZE limit is never promised, nor taken as keeping a promise', () => {
    assert.deepEqual(
      sharedExtensions([
        ['SIZE lots', 'PIPELINING'],
        ['SIZE 4096', 'PIPELINING'],
      ]),
      ['PIPELINING'],
    );
    assert.deepEqual(sharedExtensions([['SIZE 99999999999999999'], ['SIZE 4096']]), []);
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE lots']), false);
    assert.equal(keepsPromises(['PIPELINING'], ['SIZE lots', 'PIPELINING']), true);
  });
});

describe('keepsPromises', () => {
  test('nothing promised (HELO, or nothing shared) is kept by any upstream', () => {
    assert.equal(keepsPromises([], []), true);
    assert.equal(keepsPromises([], DOVECOT), true);
  });

  test('every promised keyword must be there; extra upstream extensions do not matter', () => {
    const promised = sharedExtensions([DOVECOT]);
    assert.equal(keepsPromises(promised, DOVECOT), true);
    assert.equal(keepsPromises(promised, OFFICE365), true);
    assert.equal(
      keepsPromises(
        promised,
        DOVECOT.filter((c) => c !== 'CHUNKING'),
      ),
      false,
    );
    assert.equal(keepsPromises(['SMTPUTF8'], DOVECOT), false);
    assert.equal(keepsPromises(['PIPELINING', '8BITMIME'], ['8bitmime', 'pipelining']), true);
  });

  test('SIZE: the upstream limit must be at least the promised one; unlimited only from an unlimited upstream', () => {
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE 100']), true);
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE 200']), true);
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE 99']), false);
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE']), true);
    assert.equal(keepsPromises(['SIZE 100'], ['SIZE 0']), true);
    assert.equal(keepsPromises(['SIZE 100'], ['PIPELINING']), false, 'SIZE itself missing');
    assert.equal(keepsPromises(['SIZE'], ['SIZE 100']), false);
    assert.equal(keepsPromises(['SIZE'], ['SIZE']), true);
  });
});
