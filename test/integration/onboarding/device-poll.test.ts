import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { providerSchema } from '../../../src/config/schema.js';
import { DeviceFlowError, runDeviceFlow } from '../../../src/oauth/flows/device.js';
import { createProvider } from '../../../src/oauth/provider.js';

/**
 * oidc-provider never answers slow_down, so this fake token endpoint scripts the RFC 8628
 * answers (pending, slow_down, success / access_denied) to pin the polling intervals.
 */
let server: Server;
let base: string;
let script: { status: number; body: object }[] = [];
let polls = 0;

before(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      if (req.url === '/device') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({
            device_code: 'dc',
            user_code: 'ABCD-EFGH',
            verification_uri: `${base}/activate`,
            expires_in: 600,
            interval: 2,
          }),
        );
        return;
      }
      polls++;
      const next = script.shift() ?? { status: 400, body: { error: 'expired_token' } };
      res.writeHead(next.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(next.body));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => new Promise<void>((r) => server.close(() => r())));

const provider = () =>
  createProvider(
    'fake',
    providerSchema.parse({
      token_endpoint: `${base}/token`,
      device_authorization_endpoint: `${base}/device`,
      client_id: 'c',
      client_auth: 'none',
      allow_insecure_http: true,
    }),
  );

test('device flow waits the server interval, adds 5 s after slow_down, and returns the tokens', async () => {
  polls = 0;
  script = [
    { status: 400, body: { error: 'authorization_pending' } },
    { status: 400, body: { error: 'slow_down' } },
    { status: 400, body: { error: 'authorization_pending' } },
    { status: 200, body: { access_token: 'at', refresh_token: 'rt', token_type: 'Bearer', expires_in: 60 } },
  ];
  const waits: number[] = [];
  const progress: string[] = [];
  let prompted = '';
  const t = await runDeviceFlow(provider(), {
    scope: 'mail offline_access',
    onPrompt: (da) => {
      prompted = da.user_code;
    },
    onProgress: (p) => progress.push(`${p.type}:${p.intervalS}`),
    sleep: async (ms) => {
      waits.push(ms);
    },
  });
  assert.equal(prompted, 'ABCD-EFGH');
  assert.equal(t.refresh_token, 'rt');
  assert.deepEqual(waits, [2000, 2000, 7000, 7000]);
  assert.deepEqual(progress, ['pending:2', 'slow_down:7', 'pending:7']);
  assert.equal(polls, 4);
});

test('device flow ends with a clear error when the user declines', async () => {
  script = [{ status: 400, body: { error: 'access_denied' } }];
  await assert.rejects(
    runDeviceFlow(provider(), { scope: 'mail', onPrompt: () => {}, sleep: async () => {} }),
    (e) => e instanceof DeviceFlowError && e.code === 'access_denied',
  );
});
