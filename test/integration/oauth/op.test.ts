import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { startOP, type TestOP } from '../../helpers/op.js';

let op: TestOP;
before(async () => {
  op = await startOP({
    accessTokenTtl: 60,
    clientCredentials: true,
    clientCredentialsSubject: 'shared@example.com',
  });
});
after(() => op.close());

test('mintGrant drives the code flow and returns tokens the introspection client sees with sub', async () => {
  const g = await op.mintGrant('alice@example.com');
  assert.ok(g.access_token.length > 20);
  assert.ok(g.refresh_token.length > 20);
  assert.equal(g.expires_in, 60);
  const info = await op.introspect(g.access_token);
  assert.equal(info.active, true);
  assert.equal(info.sub, 'alice@example.com');
  assert.equal(op.tokenRequests(), 0, 'the harness code exchange is not counted');
});

test('a revoked refresh token ends the grant: its access token goes inactive', async () => {
  const g = await op.mintGrant('bob@example.com');
  await op.revoke(g.refresh_token);
  assert.equal((await op.introspect(g.access_token)).active, false);
  assert.equal((await op.introspect(g.refresh_token)).active, false);
});

test('client-credentials tokens introspect with the configured subject', async () => {
  const res = await fetch(`${op.issuer}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${op.client.id}:${op.client.secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials' }),
  });
  const json = (await res.json()) as { access_token: string };
  assert.equal(res.status, 200);
  const info = await op.introspect(json.access_token);
  assert.equal(info.active, true);
  assert.equal(info.sub, 'shared@example.com');
  assert.equal(op.tokenRequests(), 1);
});

test('setDown resets token endpoint connections and counts nothing', async () => {
  op.setDown(true);
  const before = op.tokenRequests();
  await assert.rejects(fetch(`${op.issuer}/token`, { method: 'POST', body: '' }));
  assert.equal(op.tokenRequests(), before);
  op.setDown(false);
  const res = await fetch(`${op.issuer}/token`, { method: 'POST', body: '' });
  assert.equal(res.status, 400);
});
