import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, test } from 'node:test';
import { runAccountCommand } from '../../../src/commands/account.js';
import { renderQr } from '../../../src/commands/account-onboarding.js';
import { configSchema } from '../../../src/config/schema.js';
import { silentLogger } from '../../../src/log.js';
import { Keyring } from '../../../src/store/crypto.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { memoryDbStore } from '../../helpers/sqlite-store.js';
import { devicePrompt, FormDriver } from './form-driver.js';

// Any ANSI control sequence (colours, cursor moves): ESC [ … final byte.
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/;

let op: TestOP;
before(async () => {
  op = await startOP({ deviceFlow: true });
});
after(async () => {
  await op?.close();
});

test('account connect with stdout not a terminal: a plain UTF-8 QR code of the sign-in URL, no ANSI escapes', async () => {
  const store = await memoryDbStore();
  after(() => store.close());
  const account = await store.createAccount(
    { login: 'lee@example.com', upstreamUser: 'lee@example.com', provider: 'local' },
    't',
  );
  const config = configSchema.parse({
    listeners: [{ name: 'imaps', port: 0, tls: 'implicit' }],
    providers: {
      local: {
        ...opProviderConfig(op),
        scopes: ['openid', 'email', 'offline_access'],
        upstream: { host: '127.0.0.1' },
      },
    },
  });
  const out: string[] = [];
  const err: string[] = [];
  const ctx = {
    config,
    store,
    keyring: Keyring.random('k1'),
    out: (s: string) => out.push(s),
    err: (s: string) => err.push(s),
    stdin: new PassThrough(),
    log: silentLogger,
  };
  // As when the output is piped to a file or a log, whatever runs this test.
  const was = Object.getOwnPropertyDescriptor(process.stdout, 'isTTY');
  Object.defineProperty(process.stdout, 'isTTY', { value: false, configurable: true });
  try {
    const user = new FormDriver();
    const approved = (async () => {
      const { prompt, url, code } = await devicePrompt(out);
      assert.doesNotMatch(prompt, ANSI);
      assert.ok(prompt.includes(await renderQr(`${url}?user_code=${code}`, false)), prompt);
      return user.approveDevice(url, code, 'lee@example.com');
    })();
    // A failed check on the prompt fails the test at once instead of leaving the CLI polling.
    const [rc] = await Promise.all([runAccountCommand(['connect', 'lee@example.com'], ctx), approved]);
    assert.equal(rc, 0, err.join('\n'));
    assert.doesNotMatch(out.join('\n'), ANSI);
    assert.ok((await store.getGrant(account.id))?.refreshToken);
  } finally {
    if (was) Object.defineProperty(process.stdout, 'isTTY', was);
    else delete (process.stdout as { isTTY?: boolean }).isTTY;
  }
});

test('renderQr: coloured blocks for a terminal, plain blocks otherwise', async () => {
  const text = 'https://login.example.test/device?user_code=ABCD-EFGH';
  const coloured = await renderQr(text, true);
  const plain = await renderQr(text, false);
  assert.match(coloured, ANSI);
  assert.doesNotMatch(plain, ANSI);
  assert.match(plain, /^[ █▀▄\n]+$/u, 'only block characters, spaces and newlines');
});
