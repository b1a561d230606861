import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { loadConfig } from '../../../src/config/load.js';
import { silentLogger } from '../../../src/log.js';
import { Keyring } from '../../../src/store/crypto.js';
import { openStore } from '../../../src/store/index.js';
import { type ProxyProcess, startProxyProcess } from '../../bench/setup.js';
import { imaplib } from '../../helpers/clients/imaplib.js';
import { poplib } from '../../helpers/clients/pop3/index.js';
import { redact } from '../../helpers/clients/redact.js';
import { swaks } from '../../helpers/clients/smtp/index.js';
import { until } from '../../helpers/deadline.js';
import { type Dovecot, startDovecot } from '../../helpers/dovecot.js';
import { opProviderConfig, startOP, type TestOP } from '../../helpers/op.js';
import { type SmtpSink, startSmtpSink } from '../../helpers/smtp-sink.js';
import { assertNoSecretsLogged, testMessage, withCredentials } from '../../helpers/stack.js';

/**
 * The proxy started the way the README tells an operator to run it in production: `serve` as a
 * child process, cert_file/key_file (issued by a CA) on every TLS listener, the encryption key
 * from the environment with create_key_file off, accounts and grants made with the CLI.
 * Regression: with a certificate on every TLS listener, `serve` exited 1 with
 * "fatal: Error: no fallback certificate" although `check-config` said OK.
 */

const ROOT = join(import.meta.dirname, '..', '..', '..');
const CLI = join(ROOT, 'src', 'cli.ts');
const KEY_ENV = 'IMAP_PROXY_KEY';
const LOGIN = 'alice@example.com';
/** Listener name → its protocol and TLS mode; each gets a certificate of its own from the test CA. */
const LISTENERS = {
  starttls: { protocol: 'imap', tls: 'starttls' },
  imaps: { protocol: 'imap', tls: 'implicit' },
  submission: { protocol: 'smtp', tls: 'starttls' },
  submissions: { protocol: 'smtp', tls: 'implicit' },
  pop3: { protocol: 'pop3', tls: 'starttls' },
  pop3s: { protocol: 'pop3', tls: 'implicit' },
} as const;
type ListenerName = keyof typeof LISTENERS;
const named = (protocol: 'imap' | 'smtp' | 'pop3') =>
  (Object.keys(LISTENERS) as ListenerName[]).filter((n) => LISTENERS[n].protocol === protocol);
const SEEDED = testMessage('production-seeded', 'Read through a listener with its own certificate.');
const run = promisify(execFile);

interface Run {
  code: number | null;
  out: string;
  err: string;
}

/** `imap-oauth-proxy --config FILE …` as an operator types it, stdin optional; gives up after 60 s. */
function cli(configFile: string, args: string[], stdin = ''): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      ['--import', 'tsx', CLI, '--config', configFile, ...args],
      { cwd: ROOT, timeout: 60_000 },
      (error, out, err) => resolve({ code: error ? (error.code as number | null) : 0, out, err }),
    );
    child.stdin?.end(stdin);
  });
}

const openssl = (args: string[]) => run('openssl', args, { timeout: 30_000 });
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'];

/** A private CA and one server certificate per name, for localhost and 127.0.0.1. */
async function issueCertificates(dir: string, names: string[]) {
  const ca = { cert: join(dir, 'ca.crt'), key: join(dir, 'ca.key') };
  await openssl(['req', '-x509', ...EC, '-keyout', ca.key, '-out', ca.cert, '-subj', '/CN=Test Mail CA']);
  const pairs: Record<string, { cert: string; key: string }> = {};
  for (const name of names) {
    const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
    await openssl([
      'req',
      '-x509',
      ...EC,
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      '-keyout',
      pair.key,
      '-out',
      pair.cert,
      '-subj',
      `/CN=${name}.localhost`,
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-addext',
      'basicConstraints=critical,CA:FALSE',
      '-addext',
      'extendedKeyUsage=serverAuth',
    ]);
    pairs[name] = pair;
  }
  return { caFile: ca.cert, pairs };
}

/** The port a listener (or the admin server) logged when it started listening. */
function loggedPort(output: string, msg: string, listener?: string): number {
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line) as { msg?: string; listener?: string; address?: { port?: number } };
    if (o.msg === msg && o.listener === listener && o.address?.port) return o.address.port;
  }
  throw new Error(`no "${msg}" line${listener ? ` for listener ${listener}` : ''} in the proxy's output`);
}

describe('serve in production shape: cert_file/key_file on every TLS listener, key from the environment', () => {
  let op: TestOP;
  let dovecot: Dovecot;
  let sink: SmtpSink;
  let dir: string;
  let dataDir: string;
  let configFile: string;
  let caFile: string;
  let proxy: ProxyProcess | undefined;
  const secrets = new Set<string>();
  const keyBefore = process.env[KEY_ENV];

  before(async () => {
    op = await startOP({ accessTokenTtl: 3600 });
    // Dovecot submission relays what it accepts to the recording sink.
    sink = await startSmtpSink();
    dovecot = await startDovecot({
      introspectionUrl: withCredentials(op.introspection.url, op.introspection.id, op.introspection.secret),
      relayPort: sink.port,
    });
    await dovecot.seed(LOGIN, SEEDED);
    dir = mkdtempSync(join(tmpdir(), 'iop-production-'));
    dataDir = join(dir, 'data');
    mkdirSync(dataDir);
    const certs = await issueCertificates(dir, Object.keys(LISTENERS));
    caFile = certs.caFile;
    const key = randomBytes(32).toString('base64');
    // What an operator exports from a secret store before starting the proxy.
    process.env[KEY_ENV] = `k1:${key}`;
    for (const s of [key, op.client.secret, op.introspection.secret]) secrets.add(s);
    configFile = join(dir, 'config.yaml');
    writeFileSync(
      configFile,
      `data_dir: ${JSON.stringify(dataDir)}
log: { level: debug, format: json }
encryption: { key: "\${${KEY_ENV}}", create_key_file: false }
listeners: ${JSON.stringify(
        Object.entries(LISTENERS).map(([name, { protocol, tls }]) => ({
          name,
          protocol,
          address: '127.0.0.1',
          port: 0,
          tls,
          cert_file: certs.pairs[name]!.cert,
          key_file: certs.pairs[name]!.key,
        })),
      )}
admin: { address: 127.0.0.1, port: 0 }
providers:
  local: ${JSON.stringify({
    preset: 'oidc',
    ...opProviderConfig(op),
    upstream: {
      host: '127.0.0.1',
      port: dovecot.imapsPort,
      tls: 'implicit',
      ca_file: dovecot.caFile,
      connect_timeout_seconds: 10,
    },
    upstreams: {
      smtp: { host: '127.0.0.1', port: dovecot.submissionsPort, tls: 'implicit', ca_file: dovecot.caFile },
      pop3: { host: '127.0.0.1', port: dovecot.pop3sPort, tls: 'implicit', ca_file: dovecot.caFile },
    },
  })}
`,
    );
  });

  after(async () => {
    await proxy?.stop(5000);
    await dovecot?.stop();
    await sink?.stop();
    await op?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (keyBefore === undefined) delete process.env[KEY_ENV];
    else process.env[KEY_ENV] = keyBefore;
  });

  test('check-config accepts the file', async () => {
    const r = await cli(configFile, ['check-config']);
    assert.equal(r.code, 0, r.err);
    const [ok, ...notes] = r.out.trimEnd().split('\n');
    assert.equal(ok, `${configFile}: OK (6 listener(s), 1 provider(s))`);
    assert.deepEqual(
      notes.map((n) => n.slice(0, 44)),
      ['note: providers.local.smtp_delivery: smtp — '],
      'how the provider sends mail is explained',
    );
  });

  test('serve comes up on the given certificates and generates no self-signed one', async () => {
    // Before the fix it exited 1 here: "fatal: Error: no fallback certificate".
    proxy = await startProxyProcess(configFile, { cwd: ROOT, entry: CLI, nodeArgs: ['--import', 'tsx'] });
    const admin = loggedPort(proxy.output(), 'admin HTTP listening');
    await until(
      async () => {
        const res = await fetch(`http://127.0.0.1:${admin}/readyz`, { signal: AbortSignal.timeout(2000) });
        await res.arrayBuffer();
        return res.status === 200;
      },
      30_000,
      '/readyz to answer 200',
      100,
    );
    assert.equal(existsSync(join(dataDir, 'tls')), false, 'no self-signed pair in data_dir/tls');
    assert.doesNotMatch(proxy.output(), /SELF-SIGNED/);
  });

  let password: string | undefined;

  test('an account and grant made with the CLI read the seeded message through both IMAP TLS listeners', async () => {
    assert.ok(proxy, 'serve is running');
    let r = await cli(configFile, ['account', 'add', LOGIN, '--provider', 'local']);
    assert.equal(r.code, 0, r.err);
    r = await cli(configFile, ['account', 'password', 'add', LOGIN, '--label', 'scanner']);
    assert.equal(r.code, 0, r.err);
    password = /\n\s+([a-z2-9]{4}(?:-[a-z2-9]{4}){5})\n/.exec(r.out)?.[1];
    assert.ok(password, 'the app password is printed once');
    secrets.add(password);
    const grant = await op.mintGrant(LOGIN);
    secrets.add(grant.refresh_token);
    secrets.add(grant.access_token);
    r = await cli(configFile, ['grant', 'import', LOGIN], `${grant.refresh_token}\n`);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /checked: the provider issued a token/);

    const output = proxy.output();
    for (const listener of named('imap')) {
      const transport = LISTENERS[listener].tls;
      const workDir = join(dir, `client-${listener}`);
      mkdirSync(workDir);
      const got = await imaplib.fetch({
        host: 'localhost',
        port: loggedPort(output, 'listening', listener),
        transport,
        caFile,
        user: LOGIN,
        password,
        way: 'login',
        uid: 1,
        workDir,
        timeoutMs: 60_000,
      });
      const trace = (): string => redact(got.transcript, LOGIN, [password!]).slice(-3000);
      assert.equal(got.error, undefined, `${listener}: ${got.error}\n${trace()}`);
      assert.deepEqual(got.message, SEEDED, `${listener}: the seeded message, byte for byte`);
    }
  });

  test('the same account sends through both SMTP listeners (swaks) and reads through both POP3 listeners (poplib)', async () => {
    assert.ok(proxy && password, 'serve is running and the account has a password');
    const output = proxy.output();
    const pw = password;
    /** What every client run is told: the listener's port and TLS, the CA, the account, a work dir. */
    const job = (listener: ListenerName) => {
      const workDir = join(dir, `client-${listener}`);
      mkdirSync(workDir);
      return {
        host: 'localhost',
        port: loggedPort(output, 'listening', listener),
        transport: LISTENERS[listener].tls,
        caFile,
        user: LOGIN,
        password: pw,
        way: 'default' as const,
        workDir,
        timeoutMs: 60_000,
      };
    };
    for (const listener of named('smtp')) {
      const j = job(listener);
      const subject = `production ${listener}`;
      const contentFile = join(j.workDir, 'message.eml');
      writeFileSync(
        contentFile,
        `From: ${LOGIN}\nTo: bob@example.net\nSubject: ${subject}\nMessage-ID: <${listener}@example.com>\n\nSent through ${listener}.`,
      );
      const sent = await swaks.send({
        ...j,
        from: LOGIN,
        to: 'bob@example.net',
        subject,
        contentFile,
        ehloName: 'copier.example.com',
      });
      assert.equal(
        sent.error,
        undefined,
        `${listener}: ${redact(sent.transcript, LOGIN, [password]).slice(-3000)}`,
      );
      await until(
        () => sink.messages().some((m) => m.data.includes(`<${listener}@example.com>`)),
        15_000,
        `the message sent through ${listener} at the sink`,
      );
    }
    for (const listener of named('pop3')) {
      const got = await poplib.retrieve(job(listener));
      assert.equal(
        got.error,
        undefined,
        `${listener}: ${redact(got.transcript, LOGIN, [password]).slice(-3000)}`,
      );
      const crlfTrimmed = (b: Buffer | undefined) => b?.toString('latin1').replace(/(\r\n)+$/, '');
      assert.equal(
        crlfTrimmed(got.message),
        crlfTrimmed(SEEDED),
        `${listener}: the seeded message, byte for byte`,
      );
    }
  });

  test('SIGTERM stops serve with exit 0; no secret is in its stdout or stderr', async () => {
    assert.ok(proxy, 'serve is running');
    assert.equal(await proxy.stop(15_000), 0, proxy.output().slice(-2000));
    // Tokens the proxy or the grant check rotated count too.
    const { config } = loadConfig(configFile);
    const store = await openStore(
      config,
      Keyring.fromConfig(config.encryption, config.data_dir, silentLogger),
      silentLogger,
    );
    try {
      const account = await store.getAccountByLogin(LOGIN);
      const g = account ? await store.getGrant(account.id) : null;
      assert.ok(g?.refreshToken && g.accessToken, 'the imported grant is stored');
      secrets.add(g.refreshToken);
      secrets.add(g.accessToken);
    } finally {
      await store.close();
    }
    assertNoSecretsLogged(proxy.output(), secrets);
    assert.match(proxy.output(), /"msg":"stopped"/);
  });
});
