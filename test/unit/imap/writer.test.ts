import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  continuation,
  imapString,
  nstring,
  tagged,
  untaggedStatus,
} from '../../../src/protocols/imap/writer.js';

test('imapString quotes plain text and escapes backslash and double quote', () => {
  assert.equal(imapString('imap-oauth-proxy').toString(), '"imap-oauth-proxy"');
  assert.equal(imapString('a"b\\c').toString(), '"a\\"b\\\\c"');
  assert.equal(imapString('').toString(), '""');
});

test('imapString switches to a literal for CR, LF, NUL and 8-bit text', () => {
  assert.equal(imapString('a\r\nb').toString(), '{4}\r\na\r\nb');
  assert.equal(imapString('ü').toString('utf8'), '{2}\r\nü');
  assert.equal(imapString(Buffer.from([0])).toString('latin1'), '{1}\r\n\0');
});

test('nstring writes NIL for null', () => {
  assert.equal(nstring(null).toString(), 'NIL');
});

test('responses carry a response code in brackets and end with CRLF', () => {
  assert.equal(
    tagged('a1', 'NO', 'Invalid credentials', 'AUTHENTICATIONFAILED'),
    'a1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n',
  );
  assert.equal(tagged('a1', 'OK', 'done'), 'a1 OK done\r\n');
  assert.equal(untaggedStatus('BYE', 'bye'), '* BYE bye\r\n');
  assert.equal(continuation(), '+ \r\n');
});
