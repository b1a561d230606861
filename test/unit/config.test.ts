import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { upstreamTargets } from '../../src/app/listeners.js';
import { configJsonSchemaText } from '../../src/config/json-schema.js';
import { loadConfig, parseConfig } from '../../src/config/load.js';
import { upstreamFor } from '../../src/config/presets.js';
import { ConfigError } from '../../src/errors.js';
import { redemptionScopes } from '../../src/oauth/flows/authcode.js';
import type { OAuthProvider } from '../../src/oauth/provider.js';

const MIN = `
encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners:
  - { name: imaps, port: 1993, tls: implicit }
providers:
  local:
    issuer: http://127.0.0.1:3000
    client_id: proxy
    client_secret: s3cret
    allow_insecure_http: true
    upstream: { host: 127.0.0.1, port: 993 }
`;

function errorOf(text: string, env: NodeJS.ProcessEnv = {}): string {
  try {
    parseConfig(text, '/etc/iop/config.yaml', env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.message;
  }
  assert.fail('expected a ConfigError');
}

test('the example config loads with its defaults and presets applied', () => {
  const { config } = loadConfig('config/example.yaml', { HOME: '/home/x' });
  assert.equal(config.listeners.length, 6);
  assert.deepEqual(
    config.listeners.map((l) => [l.name, l.protocol, l.port, l.tls]),
    [
      ['starttls', 'imap', 1143, 'starttls'],
      ['imaps', 'imap', 1993, 'implicit'],
      ['submission', 'smtp', 1587, 'starttls'],
      ['submissions', 'smtp', 1465, 'implicit'],
      ['pop3', 'pop3', 1110, 'starttls'],
      ['pop3s', 'pop3', 1995, 'implicit'],
    ],
  );
  assert.equal(config.admin.port, 9143);
  const ms = config.providers.microsoft!;
  assert.match(
    ms.token_endpoint!,
    /^https:\/\/login\.microsoftonline\.com\/organizations\/oauth2\/v2\.0\/token$/,
  );
  assert.equal(upstreamFor(ms, 'imap').host, 'outlook.office365.com');
  assert.equal(upstreamFor(ms, 'imap').post_login_probe, true);
  assert.equal(upstreamFor(config.providers.google!, 'imap').host, 'imap.gmail.com');
  assert.deepEqual(
    [upstreamFor(ms, 'smtp').host, upstreamFor(ms, 'smtp').port, upstreamFor(ms, 'smtp').tls],
    ['smtp.office365.com', 587, 'starttls'],
  );
  const g = upstreamFor(config.providers.google!, 'smtp');
  assert.deepEqual([g.host, g.port, g.tls], ['smtp.gmail.com', 465, 'implicit']);
  const msPop = upstreamFor(ms, 'pop3');
  assert.deepEqual([msPop.host, msPop.port, msPop.tls], ['outlook.office365.com', 995, 'implicit']);
  assert.equal(upstreamFor(config.providers.google!, 'pop3').host, 'pop.gmail.com');
  assert.deepEqual(ms.scopes, [
    'https://outlook.office.com/IMAP.AccessAsUser.All',
    'https://outlook.office.com/SMTP.Send',
    'https://outlook.office.com/POP.AccessAsUser.All',
    'offline_access',
  ]);
});

test('a minimal config fills every default', () => {
  const { config } = parseConfig(MIN, '/etc/iop/config.yaml', {});
  assert.equal(config.limits.line_bytes, 8192);
  assert.equal(config.limits.literal_bytes, 8192);
  assert.equal(config.listeners[0]!.allow_cleartext_login, false);
  assert.equal(config.data_dir, '/etc/iop/data', 'relative paths resolve against the config folder');
  const up = upstreamFor(config.providers.local!, 'imap', { port: 10993 });
  assert.deepEqual([up.host, up.port, up.tls, up.mechanism], ['127.0.0.1', 10993, 'implicit', 'auto']);
});

test('errors name the file, line and key in plain words', () => {
  const msg = errorOf(MIN.replace('tls: implicit', 'tls: tsl'));
  assert.match(msg, /^\/etc\/iop\/config\.yaml:4:\d+: listeners\[0\]\.tls: .*implicit/m);
  assert.match(errorOf(`${MIN}\nbogus: 1\n`), /config\.yaml:\d+:\d+: \(top level\): unknown key\(s\): bogus/);
  assert.match(errorOf(MIN.replace('port: 1993, ', '')), /listeners\[0\]\.port: required/);
  assert.match(errorOf('listeners: [\n'), /config\.yaml:\d+:\d+: YAML syntax/);
});

test('every problem is listed at once, and cross-key rules are checked', () => {
  const text = MIN.replace(
    '{ name: imaps, port: 1993, tls: implicit }',
    '{ name: a, port: 1, tls: none }\n  - { name: a, port: 1, tls: none }',
  );
  const msg = errorOf(text);
  assert.match(msg, /listeners\[1\]\.name: duplicate listener name "a"/);
  assert.match(msg, /listeners\[1\]\.port: 127\.0\.0\.1:1 is used by another listener/);
  assert.match(
    errorOf(MIN.replace('client_secret: s3cret', '')),
    /providers\.local\.client_secret: required/,
  );
  assert.match(
    errorOf(MIN.replace('upstream: { host: 127.0.0.1, port: 993 }', '')),
    /providers\.local\.upstreams\.imap: upstreams\.imap\.host \(or upstream\.host\) is required/,
  );
});

test('${VAR} and ${VAR:-default} come from the environment; a missing variable is an error', () => {
  const text = MIN.replace('client_secret: s3cret', 'client_secret: ${SECRET}').replace(
    '{ name: imaps, port: 1993, tls: implicit }',
    '\n      name: imaps\n      port: ${PORT:-1994}\n      tls: implicit',
  );
  const { config } = parseConfig(text, '/x/c.yaml', { SECRET: 'from-env' });
  assert.equal(config.providers.local!.client_secret, 'from-env');
  assert.equal(config.listeners[0]!.port, 1994);
  const msg = errorOf(text);
  assert.match(msg, /providers\.local\.client_secret: environment variable SECRET is not set/);
  assert.doesNotMatch(msg, /from-env/);
});

test('secrets can come from <key>_file, relative to the config file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'secret.txt'), 'file-secret\n');
  writeFileSync(join(dir, 'c.yaml'), MIN.replace('client_secret: s3cret', 'client_secret_file: secret.txt'));
  assert.equal(loadConfig(join(dir, 'c.yaml'), {}).config.providers.local!.client_secret, 'file-secret');
  writeFileSync(join(dir, 'c.yaml'), MIN.replace('client_secret: s3cret', 'client_secret_file: nope.txt'));
  assert.throws(
    () => loadConfig(join(dir, 'c.yaml'), {}),
    /client_secret_file: cannot read nope\.txt \(ENOENT\)/,
  );
  const both = MIN.replace('client_secret: s3cret', 'client_secret: a\n    client_secret_file: secret.txt');
  assert.match(errorOf(both), /give either client_secret or client_secret_file/);
});

test('a missing config file is a clear error', () => {
  assert.throws(
    () => loadConfig('/nonexistent/config.yaml'),
    /\/nonexistent\/config\.yaml: cannot read config file \(ENOENT\)/,
  );
});

test('config/config.schema.json is generated from the schema and up to date', () => {
  assert.equal(
    readFileSync('config/config.schema.json', 'utf8'),
    configJsonSchemaText(),
    'run: imap-oauth-proxy config-schema > config/config.schema.json',
  );
});

test('the README configuration reference is generated from the schema and up to date', async () => {
  const { configReferenceMarkdown } = await import('../../src/config/reference.js');
  const readme = readFileSync('README.md', 'utf8');
  const m = /<!-- config-reference:start -->\n([\s\S]*?)<!-- config-reference:end -->/.exec(readme);
  assert.ok(m, 'README has the config reference markers');
  assert.equal(m[1], configReferenceMarkdown(), 'run: imap-oauth-proxy config-schema --markdown');
});

test('listeners speak imap unless they say otherwise; an unknown protocol is refused with file, line and key', () => {
  const { config } = parseConfig(MIN, '/etc/iop/config.yaml', {});
  assert.equal(config.listeners[0]!.protocol, 'imap');
  const bad = MIN.replace(
    '{ name: imaps, port: 1993, tls: implicit }',
    '{ name: imaps, port: 1993, tls: implicit, protocol: nntp }',
  );
  assert.throws(
    () => parseConfig(bad, '/etc/iop/config.yaml', {}),
    /\/etc\/iop\/config\.yaml:4:\d+: listeners\[0\]\.protocol: /,
  );
});

test('upstream (older spelling) and upstreams.imap configure the same server; both at once is an error', () => {
  const old = parseConfig(MIN, '/etc/iop/config.yaml', {}).config;
  const renamed = MIN.replace(
    'upstream: { host: 127.0.0.1, port: 993 }',
    'upstreams: { imap: { host: 127.0.0.1, port: 993 } }',
  );
  const now = parseConfig(renamed, '/etc/iop/config.yaml', {}).config;
  assert.deepEqual(upstreamFor(now.providers.local!, 'imap'), upstreamFor(old.providers.local!, 'imap'));
  assert.equal(upstreamFor(old.providers.local!, 'imap').host, '127.0.0.1');
  const both = MIN.replace(
    'upstream: { host: 127.0.0.1, port: 993 }',
    'upstream: { host: 127.0.0.1, port: 993 }\n    upstreams: { imap: { host: 127.0.0.2 } }',
  );
  assert.throws(
    () => parseConfig(both, '/etc/iop/config.yaml', {}),
    /providers\.local\.upstream: set upstreams\.imap or its older spelling upstream, not both/,
  );
  // A preset fills upstreams.imap; the older key still overrides it.
  const ms = parseConfig(
    MIN.replace(
      /local:[\s\S]*$/,
      'ms:\n    preset: microsoft\n    client_id: c\n    client_secret: s\n    upstream: { port: 1993 }\n',
    ),
    '/etc/iop/config.yaml',
    {},
  ).config.providers.ms!;
  assert.deepEqual(
    [upstreamFor(ms, 'imap').host, upstreamFor(ms, 'imap').port],
    ['outlook.office365.com', 1993],
  );
});

test('presets ask for the scopes of the protocols the listeners speak', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const IMAP = 'https://outlook.office.com/IMAP.AccessAsUser.All';
  const SMTP = 'https://outlook.office.com/SMTP.Send';
  const scopesOf = (listeners: string) => {
    writeFileSync(
      join(dir, 'c.yaml'),
      `encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners:
${listeners}
providers:
  ms: { preset: microsoft, client_id: c, client_secret: s }
  google: { preset: google, client_id: c, client_secret: s }
`,
    );
    const { providers } = loadConfig(join(dir, 'c.yaml'), {}).config;
    return { ms: providers.ms!.scopes, google: providers.google!.scopes };
  };
  const imapOnly = scopesOf(
    '  - { name: imaps, port: 1993, tls: implicit }\n  - { name: imap, port: 1143, tls: starttls }',
  );
  assert.deepEqual(imapOnly.ms, [IMAP, 'offline_access'], 'no SMTP.Send without an SMTP listener');
  assert.deepEqual(imapOnly.google, ['https://mail.google.com/']);
  const both = scopesOf(
    '  - { name: imaps, port: 1993, tls: implicit }\n  - { name: submission, protocol: smtp, port: 1587, tls: starttls }',
  );
  assert.deepEqual([...both.ms!].sort(), [IMAP, SMTP, 'offline_access'].sort());
  assert.deepEqual(both.google, ['https://mail.google.com/'], 'one Google scope covers IMAP and SMTP');
  const smtpOnly = scopesOf('  - { name: submissions, protocol: smtp, port: 1465, tls: implicit }');
  assert.deepEqual(smtpOnly.ms, [SMTP, 'offline_access']);
});

test('Graph delivery: consent for Graph instead of SMTP.Send, the code redeemed for the mail servers, tokens for Graph', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'iop-cfg-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const load = (graphUrl?: string) => {
    writeFileSync(
      join(dir, 'c.yaml'),
      `encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners:
  - { name: imaps, port: 1993, tls: implicit }
  - { name: submissions, protocol: smtp, port: 1465, tls: implicit }
providers:
  ms: { preset: microsoft, client_id: c, client_secret: s, smtp_delivery: graph${graphUrl ? `, graph_url: "${graphUrl}"` : ''} }
`,
    );
    return loadConfig(join(dir, 'c.yaml'), {}).config.providers.ms!;
  };
  const ms = load();
  const SEND = 'https://graph.microsoft.com/Mail.Send';
  const RW = 'https://graph.microsoft.com/Mail.ReadWrite';
  assert.deepEqual(
    [...ms.scopes!].sort(),
    ['https://outlook.office.com/IMAP.AccessAsUser.All', SEND, RW, 'offline_access'].sort(),
  );
  const provider = { name: 'ms', config: ms } as unknown as OAuthProvider;
  assert.equal(
    redemptionScopes(provider),
    'https://outlook.office.com/IMAP.AccessAsUser.All offline_access openid email profile',
    'Microsoft issues a token for one resource: the code is redeemed for the mail servers',
  );
  const smtp = upstreamFor(ms, 'smtp');
  assert.equal(smtp.graph?.url, 'https://graph.microsoft.com');
  assert.equal(smtp.graph?.saveToSentItems, true);
  assert.equal(smtp.graph?.maxMessageBytes, 36_700_160);
  assert.deepEqual(smtp.token_audience, {
    key: 'graph',
    scope: `${SEND} ${RW}`,
    resource: undefined,
    appOnlyScope: 'https://graph.microsoft.com/.default',
  });
  assert.equal(upstreamFor(ms, 'imap').token_audience, undefined, 'IMAP keeps the main token');
  const us = upstreamFor(load('https://graph.microsoft.us'), 'smtp');
  assert.equal(
    us.token_audience?.scope,
    'https://graph.microsoft.us/Mail.Send https://graph.microsoft.us/Mail.ReadWrite',
  );
  assert.equal(
    us.token_audience?.appOnlyScope,
    'https://graph.microsoft.us/.default',
    'national clouds have their own',
  );
});

test('an SMTP listener reaches a Graph-delivery provider that names no SMTP server (its EHLO must keep to what Graph delivery offers)', () => {
  const { config } = parseConfig(
    `encryption: { key: "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }
listeners:
  - { name: submissions, protocol: smtp, port: 1465, tls: implicit }
providers:
  relay: { preset: oidc, token_endpoint: "https://sso.example.com/token", client_id: x, client_secret: y, upstreams: { smtp: { host: smtp.example.com } } }
  graph: { preset: oidc, token_endpoint: "https://sso.example.com/token", client_id: x, client_secret: y, smtp_delivery: graph }
`,
    '/etc/iop/config.yaml',
    {},
  );
  const targets = upstreamTargets(config, 'smtp');
  assert.deepEqual(
    targets.map((t) => [t.host, t.graph !== undefined]),
    [
      ['smtp.example.com', false],
      ['graph.microsoft.com', true],
    ],
  );
});

test('a per-account upstream override applies to IMAP, and to SMTP only when nested under smtp', () => {
  const { config } = loadConfig('config/example.yaml', { HOME: '/home/x' });
  const ms = config.providers.microsoft!;
  const override = { host: 'imap.internal', smtp: { host: 'smtp.internal', port: 2525 } };
  assert.equal(upstreamFor(ms, 'imap', override).host, 'imap.internal');
  const smtp = upstreamFor(ms, 'smtp', override);
  assert.deepEqual([smtp.host, smtp.port, smtp.tls], ['smtp.internal', 2525, 'starttls']);
  assert.equal(upstreamFor(ms, 'smtp', { host: 'imap.internal' }).host, 'smtp.office365.com');
});

test('check-config: cleartext login needs allow_from, allow_from entries must be CIDRs, and every listener protocol needs an upstream', () => {
  const base = `
encryption: { key: "k1:${Buffer.alloc(32, 1).toString('base64')}" }
providers:
  corp: { preset: oidc, token_endpoint: "https://sso.example.com/token", client_id: x, client_secret: y, upstreams: { imap: { host: imap.example.com } } }
`;
  const msg = (yaml: string) => {
    try {
      parseConfig(yaml, '/etc/iop/config.yaml', {});
    } catch (err) {
      return String((err as Error).message);
    }
    return 'OK';
  };
  assert.match(
    msg(`${base}listeners:\n  - { name: plain, port: 143, tls: none, allow_cleartext_login: true }\n`),
    /config\.yaml:\d+:\d+: listeners\[0\]\.allow_cleartext_login: needs allow_from/,
  );
  assert.equal(
    msg(
      `${base}listeners:\n  - { name: plain, port: 143, tls: none, allow_cleartext_login: true, allow_from: [192.168.50.0/24] }\n`,
    ),
    'OK',
  );
  assert.match(
    msg(
      `${base}listeners:\n  - { name: s, port: 587, tls: starttls, protocol: smtp, allow_from: [192.168.50.0/33] }\n`,
    ),
    /allow_from\[0\]: "192\.168\.50\.0\/33": prefix length must be 0-32/,
  );
  assert.match(
    msg(`${base}listeners:\n  - { name: s, port: 587, tls: starttls, protocol: smtp }\n`),
    /providers\.corp\.upstreams\.smtp: upstreams\.smtp\.host is required for this preset: a listener speaks smtp/,
  );
  assert.match(
    msg(`${base}listeners:\n  - { name: i, port: 143, tls: starttls, server_name: mx.example.com }\n`),
    /listeners\[0\]\.server_name: server_name applies to smtp listeners only/,
  );
});
