import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { jwtVerify } from 'jose';
import { clientCredentialsGrant, customFetch } from 'openid-client';
import { providerSchema } from '../../../src/config/schema.js';
import { createProvider } from '../../../src/oauth/provider.js';
import { parsePrivateKey, signJwt, thumbprintToX5t, toSigningKey } from '../../../src/oauth/signing-key.js';

const dir = mkdtempSync(join(tmpdir(), 'iop-x5t-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const TOKEN_URL = 'https://login.example.test/tenant/oauth2/v2.0/token';
const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const keyFile = join(dir, 'cert-key.pem');
writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());

/** The client assertion the provider sends on a client-credentials request (captured, not sent). */
async function assertionFor(thumbprint: string | undefined) {
  const provider = createProvider(
    'ms',
    providerSchema.parse({
      token_endpoint: TOKEN_URL,
      client_id: 'app-id',
      client_auth: 'private_key_jwt',
      private_key_file: keyFile,
      ...(thumbprint ? { certificate_thumbprint: thumbprint } : {}),
    }),
  );
  const config = await provider.configuration();
  let body = new URLSearchParams();
  // No token endpoint runs here: the fetch hook captures the request and answers like Entra ID.
  config[customFetch] = async (_url, init) => {
    body = new URLSearchParams(String(init.body));
    return Response.json({ access_token: 'at', token_type: 'Bearer', expires_in: 3599 });
  };
  await clientCredentialsGrant(config, { scope: 'https://outlook.office365.com/.default' });
  const [h = '', c = '', sig = ''] = (body.get('client_assertion') ?? '').split('.');
  return {
    body,
    header: JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>,
    claims: JSON.parse(Buffer.from(c, 'base64url').toString()) as Record<string, unknown>,
    signed: verify('sha256', Buffer.from(`${h}.${c}`), publicKey, Buffer.from(sig, 'base64url')),
  };
}

test('Azure hex thumbprint becomes the base64url SHA-1 in the assertion x5t header', async () => {
  const sha1 = createHash('sha1').update('certificate der').digest();
  const hex = sha1.toString('hex').toUpperCase();
  const a = await assertionFor(hex);
  assert.equal(a.header.x5t, sha1.toString('base64url'));
  assert.equal(a.header.alg, 'RS256');
  // The header edit happens before signing: the signature covers the x5t header.
  assert.equal(a.signed, true);
  assert.equal(a.body.get('client_assertion_type'), 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer');
  assert.equal(a.body.get('client_id'), 'app-id');
  assert.equal(a.claims.iss, 'app-id');
  assert.equal(a.claims.sub, 'app-id');
  assert.ok(typeof a.claims.jti === 'string' && typeof a.claims.exp === 'number');
  // Same claims as openid-client's PrivateKeyJwt: audience is the issuer, valid for one minute.
  assert.equal(a.claims.aud, 'https://login.example.test');
  assert.equal(Number(a.claims.exp) - Number(a.claims.iat), 60);
  assert.equal(a.claims.nbf, a.claims.iat);
});

test('without certificate_thumbprint the assertion carries no x5t', async () => {
  const a = await assertionFor(undefined);
  assert.equal(a.header.x5t, undefined);
  assert.equal(a.signed, true);
});

test('thumbprintToX5t accepts colon/space separated and lower-case hex; other input passes through', () => {
  const sha1 = createHash('sha1').update('x').digest();
  const want = sha1.toString('base64url');
  const hex = sha1.toString('hex');
  assert.equal(thumbprintToX5t(hex), want);
  assert.equal(thumbprintToX5t(hex.toUpperCase().match(/../g)?.join(':') ?? ''), want);
  assert.equal(thumbprintToX5t(hex.match(/../g)?.join(' ') ?? ''), want);
  // Already base64url (as some portals show it): used as is.
  assert.equal(thumbprintToX5t(want), want);
});

test('PKCS#1 RSA and SEC1 P-256 PEM keys sign verifiable RS256/ES256 JWTs; other curves are refused', async () => {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cases = [
    {
      pem: rsa.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
      pub: rsa.publicKey,
      alg: 'RS256',
    },
    {
      pem: ec.privateKey.export({ type: 'sec1', format: 'pem' }).toString(),
      pub: ec.publicKey,
      alg: 'ES256',
    },
  ];
  for (const c of cases) {
    const key = await toSigningKey(parsePrivateKey(c.pem, 'test'), 'test');
    const jwt = await signJwt(key, { kid: 'k' }, { sub: 'x' });
    const { payload, protectedHeader } = await jwtVerify(jwt, c.pub);
    assert.equal(protectedHeader.alg, c.alg);
    assert.equal(protectedHeader.kid, 'k');
    assert.equal(payload.sub, 'x');
  }
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  await assert.rejects(toSigningKey(p384, 'where'), /where: only RSA and P-256 keys are supported/);
});
