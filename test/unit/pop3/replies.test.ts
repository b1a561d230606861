import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type FailureReason, LOGIN_RESULTS } from '../../../src/errors.js';
import { err, multiline, ok, pop3FailureLine, pop3Reply } from '../../../src/protocols/pop3/replies.js';

const FAILURES = LOGIN_RESULTS.filter((r): r is FailureReason => r !== 'success');

/** One line: `-ERR [CODE] text` CRLF, printable ASCII, within RFC 2449's 512 octets. */
const ERR_LINE = /^-ERR \[(AUTH|SYS\/TEMP|IN-USE)\] [\x20-\x7e]+\r\n$/;

/** The extra words the core sends today (where to reconnect, what to enable, a changed upstream). */
const CLIENT_TEXTS = [
  undefined,
  '',
  'Reconnect the mailbox at https://proxy.example.com/connect',
  'Ask your administrator to reconnect the mailbox to allow this (POP.AccessAsUser.All)',
  'The mail server changed its features; connect again',
];

describe('pop3FailureLine', () => {
  test('every failure line is one -ERR [CODE] text line of printable ASCII, with or without extra words', () => {
    for (const reason of FAILURES)
      for (const extra of CLIENT_TEXTS) {
        const line = pop3FailureLine(reason, extra);
        assert.match(line, ERR_LINE, `${reason} ${extra}`);
        assert.ok(line.length <= 512, `${reason}: ${line.length} octets`);
        const r = pop3Reply(reason);
        assert.ok(line.startsWith(`-ERR [${r.code}] ${r.text}`), reason);
        if (extra) assert.ok(line.endsWith(`. ${extra}\r\n`), reason);
      }
  });

  test('extra words cannot break the line or smuggle a second reply; 8-bit text becomes ?', () => {
    const line = pop3FailureLine('needs_consent', 'go\r\n+OK Logged in\x00 to https://exämple.org/🔑');
    assert.match(line, ERR_LINE);
    assert.equal(
      line,
      '-ERR [AUTH] Mailbox authorization expired. go  +OK Logged in  to https://ex?mple.org/?\r\n',
    );
  });
});

describe('ok, err, multiline', () => {
  test('single lines', () => {
    assert.equal(ok('Logged in'), '+OK Logged in\r\n');
    assert.equal(err(undefined, 'USER first'), '-ERR USER first\r\n');
    assert.equal(err('SYS/TEMP', 'later'), '-ERR [SYS/TEMP] later\r\n');
    assert.equal(err(undefined, 'a\nb\tc\x7f'), '-ERR a b c \r\n');
  });

  test('a multi-line response ends with a dot line; a line starting with "." is byte-stuffed', () => {
    assert.equal(
      multiline('Capability list follows', ['TOP', 'UIDL']),
      '+OK Capability list follows\r\nTOP\r\nUIDL\r\n.\r\n',
    );
    assert.equal(multiline('x', []), '+OK x\r\n.\r\n');
    assert.equal(multiline('x', ['.', '.hidden', 'a\r\n.']), '+OK x\r\n..\r\n..hidden\r\na  .\r\n.\r\n');
  });
});
