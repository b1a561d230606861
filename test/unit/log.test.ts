import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { createLogger } from '../../src/log.js';

function capture() {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { log: createLogger({ level: 'trace', format: 'json', destination }), text: () => chunks.join('') };
}

test('every password, token, secret and Authorization header is redacted, top level and up to two levels down', () => {
  const { log, text } = capture();
  const secrets = {
    password: 'S-password-1',
    token: 'S-token-2',
    accessToken: 'S-access-3',
    access_token: 'S-access-4',
    refreshToken: 'S-refresh-5',
    refresh_token: 'S-refresh-6',
    id_token: 'S-id-7',
    clientSecret: 'S-client-8',
    client_secret: 'S-client-9',
    secret: 'S-secret-10',
    assertion: 'S-assertion-11',
    authorization: 'Bearer S-auth-12',
  };
  log.info(secrets, 'top level');
  log.info({ grant: { refresh_token: 'S-nested-13', access_token: 'S-nested-14' } }, 'nested');
  log.info({ headers: { authorization: 'Basic S-header-15' } }, 'headers');
  log.info({ req: { headers: { authorization: 'Bearer S-req-16', cookie: 'sid=S-cookie-17' } } }, 'request');
  log.child({ cid: 'c1' }).info({ password: 'S-child-18' }, 'child logger');
  log.info(
    { op: { grant: { refresh_token: 'S-deep-19' } }, tokens: { set: { access_token: 'S-deep-20' } } },
    'deep',
  );
  const out = text();
  assert.equal(out.split('\n').filter(Boolean).length, 6);
  assert.doesNotMatch(out, /S-[a-z]+-\d+/, 'no secret value in the output');
  assert.ok((out.match(/\[Redacted\]/g) ?? []).length >= 18);
  // Non-secret context stays readable.
  assert.match(out, /"cid":"c1"/);
  assert.match(out, /"msg":"child logger"/);
});

test('JSON by default when writing to a stream: one object per line with level, time and name', () => {
  const { log, text } = capture();
  log.info({ result: 'bad_credentials' }, 'login failed');
  const line = JSON.parse(text()) as Record<string, unknown>;
  assert.equal(line.level, 30);
  assert.equal(line.name, 'imap-oauth-proxy');
  assert.equal(line.result, 'bad_credentials');
  assert.equal(typeof line.time, 'number');
});
