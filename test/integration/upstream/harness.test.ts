import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { connect } from 'node:tls';
import { xoauth2Blob } from '../../../src/sasl/client.js';
import { startDovecot } from '../../helpers/dovecot.js';
import { startFakeUpstream } from '../../helpers/fake-upstream.js';

/** Sends `lines` over verified TLS and collects the reply until `until` matches. */
async function converse(port: number, ca: string, lines: string, until: RegExp): Promise<string> {
  const s = connect({ host: '127.0.0.1', port, ca: readFileSync(ca), servername: 'localhost' });
  let text = '';
  s.write(lines);
  for await (const chunk of s) {
    text += (chunk as Buffer).toString();
    if (until.test(text)) break;
  }
  s.destroy();
  return text;
}

test('Dovecot harness: plain-password user reads a seeded message; stop kills the PID and removes the dir', async (t) => {
  const dv = await startDovecot({ users: [{ name: 'bob@example.com', password: 'pw-bob' }] });
  t.after(() => dv.stop());
  await dv.seed('bob@example.com', 'Subject: baseline\r\n\r\nhi\r\n');
  const reply = await converse(
    dv.imapsPort,
    dv.caFile,
    'a LOGIN bob@example.com pw-bob\r\nb SELECT INBOX\r\nc FETCH 1 BODY[HEADER.FIELDS (SUBJECT)]\r\n',
    /^c (OK|NO|BAD)/m,
  );
  assert.match(reply, /^a OK/m);
  assert.match(reply, /^\* 1 EXISTS/m);
  assert.match(reply, /Subject: baseline/);
  const wrong = await converse(dv.imapsPort, dv.caFile, 'a LOGIN bob@example.com nope\r\n', /^a (OK|NO)/m);
  assert.match(wrong, /^a NO \[AUTHENTICATIONFAILED\]/m);
  assert.match(dv.readLog(), /starting up/i);
  await dv.stop();
  assert.throws(() => process.kill(dv.pid, 0), { code: 'ESRCH' });
  assert.equal(existsSync(dv.dir), false);
});

test('fake upstream holds an IDLE after login and ends it on DONE', async (t) => {
  const f = await startFakeUpstream();
  t.after(() => f.close());
  const reply = await converse(
    f.port,
    f.caFile,
    `a AUTHENTICATE XOAUTH2 ${xoauth2Blob('u@example.com', 'any')}\r\nb IDLE\r\nDONE\r\n`,
    /^b OK/m,
  );
  assert.match(reply, /^a OK/m);
  assert.match(reply, /^\+ idling/m);
  assert.match(reply, /^b OK IDLE terminated/m);
});
