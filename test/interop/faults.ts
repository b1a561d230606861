import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClientDriver } from '../helpers/clients/index.js';
import { redact } from '../helpers/clients/redact.js';
import { type FakeUpstreamOptions, startFakeUpstream } from '../helpers/fake-upstream.js';
import type { Stack } from '../helpers/stack.js';
import { linesFor } from './harness.js';

/**
 * Provider behaviours Dovecot cannot show, played by the scripted fake upstream (fault
 * injection a real server cannot do) behind the real proxy, seen through a real client.
 */
export interface FaultCase {
  name: string;
  fake: Partial<FakeUpstreamOptions>;
  mechanism: 'xoauth2' | 'oauthbearer';
  postLoginProbe: boolean;
  /** RFC 5530 code the legacy client must be told. */
  expectCode: string;
  /** What the proxy must have sent the fake, beyond AUTHENTICATE (e.g. the failure ack). */
  expectSent?: (received: string[]) => string | undefined;
}

const none = new Set<string>();

export const FAULTS: FaultCase[] = [
  {
    name: 'Gmail-shaped XOAUTH2 refusal (+ base64 JSON, then NO)',
    fake: { reject: 'gmail', accept: none },
    mechanism: 'xoauth2',
    postLoginProbe: false,
    expectCode: 'AUTHORIZATIONFAILED',
    expectSent: (r) =>
      r.includes('') ? undefined : 'the proxy never answered the JSON continuation with an empty line',
  },
  {
    name: 'Gmail-shaped OAUTHBEARER refusal (+ JSON, ack 0x01)',
    fake: { reject: 'gmail', accept: none },
    mechanism: 'oauthbearer',
    postLoginProbe: false,
    expectCode: 'AUTHORIZATIONFAILED',
    expectSent: (r) =>
      r.includes('AQ==') ? undefined : 'the proxy never acknowledged the failure with AQ==',
  },
  {
    name: 'Microsoft-shaped immediate NO',
    fake: { reject: 'microsoft', accept: none },
    mechanism: 'xoauth2',
    postLoginProbe: false,
    expectCode: 'AUTHORIZATIONFAILED',
  },
  {
    name: 'Microsoft "authenticated but not connected" (post_login_probe on)',
    fake: { accept: 'any', notConnected: true },
    mechanism: 'xoauth2',
    postLoginProbe: true,
    expectCode: 'AUTHORIZATIONFAILED',
    expectSent: (r) => (r.some((l) => / NOOP$/i.test(l)) ? undefined : 'the proxy sent no NOOP probe'),
  },
  {
    name: 'Microsoft-shaped throttling (NO [UNAVAILABLE] … throttled)',
    fake: { reject: 'throttle', accept: none },
    mechanism: 'xoauth2',
    postLoginProbe: false,
    expectCode: 'UNAVAILABLE',
  },
];

export interface FaultResult {
  fault: FaultCase;
  client: ClientDriver;
  observedLogin: string;
  told: string;
  pass: boolean;
  failure?: string;
}

let seq = 0;

function secretForms(user: string, password: string): string[] {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  return [password, b64(password), b64(`\0${user}\0${password}`), b64(`${user}\0${user}\0${password}`)];
}

export async function runFault(stack: Stack, fault: FaultCase, client: ClientDriver): Promise<FaultResult> {
  const fake = await startFakeUpstream({ tls: 'implicit', ...fault.fake });
  const workDir = mkdtempSync(join(tmpdir(), 'iop-fault-'));
  try {
    const login = `fault${++seq}-${client.name.replace(/\W+/g, '')}`.toLowerCase();
    const acct = await stack.addAccount(login, {
      upstreamOverride: {
        host: fake.host,
        port: fake.port,
        tls: 'implicit',
        ca_file: fake.caFile,
        mechanism: fault.mechanism,
        post_login_probe: fault.postLoginProbe,
      },
    });
    const run = await client.fetch({
      host: 'localhost',
      port: stack.ports.imaps,
      transport: 'implicit',
      caFile: stack.proxyCaFile,
      user: login,
      password: acct.password,
      way: 'default',
      uid: 1,
      workDir,
      timeoutMs: 30_000,
    });
    const raw = `${run.error ?? ''}\n${run.transcript}`;
    const text = redact(raw, login, [acct.password]);
    // The verbose traces carry the password (imaplib) or the PLAIN blob (curl): both must go.
    const forms = secretForms(login, acct.password);
    const told = /\bNO \[([A-Z-]+)\]/.exec(text)?.[1] ?? 'nothing';
    const observedLogin =
      linesFor(stack.logs(), login)
        .map((l) => l.parsed)
        .filter((p) => p?.msg === 'login failed')
        .map((p) => String(p?.mechanism))
        .join(', ') || '—';
    const problems = [
      told === fault.expectCode ? undefined : `client was told [${told}], want [${fault.expectCode}]`,
      run.message?.length ? 'the client fetched a message through a failed login' : undefined,
      fault.expectSent?.(fake.received),
      forms.some((f) => raw.includes(f))
        ? undefined
        : 'the client trace shows no credentials: redaction untested',
      forms.some((f) => text.includes(f)) ? 'the redacted transcript still carries the password' : undefined,
    ].filter(Boolean);
    return {
      fault,
      client,
      observedLogin,
      told,
      pass: problems.length === 0,
      failure: problems.length ? `${problems.join('; ')}\n--- client transcript ---\n${text}` : undefined,
    };
  } finally {
    await fake.close();
    rmSync(workDir, { recursive: true, force: true });
  }
}
