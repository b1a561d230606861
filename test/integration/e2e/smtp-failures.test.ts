import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CONNECT, failureTable, tableLogin } from '../../helpers/failure-table.js';
import { startFakeSmtpUpstream } from '../../helpers/fake-smtp-upstream.js';
import { connectSmtp } from '../../helpers/smtp-client.js';
import { loginCount, startStack } from '../../helpers/stack.js';

// Every row of the SMTP reply table, end to end on real components (oidc-provider, Dovecot
// submission). The one fake: Microsoft's 535 5.7.139 "SMTP AUTH disabled", because no real
// Microsoft tenant is reachable from here and no server that runs here answers that way.

/** EHLO and AUTH PLAIN, over implicit TLS unless `cleartext`; returns the reply as one line. */
const auth = tableLogin({
  connect: connectSmtp,
  ports: (s) => [s.ports.submission, s.ports.submissions],
  async login(c, login, password) {
    assert.equal((await c.ehlo('copier.example.net')).code, 250);
    const ir = Buffer.from(`\0${login}\0${password}`).toString('base64');
    const r = await c.command(`AUTH PLAIN ${ir}`, 15_000);
    return { reply: `${r.code} ${r.lines.join(' ')}`, ok: r.code === 235 };
  },
});

describe('what an SMTP client is told when a login fails, row by row (real OP and Dovecot submission)', () => {
  failureTable(
    {
      protocol: 'smtp',
      login: auth,
      requiredScope: 'https://mail.example.test/smtp.send',
      replies: {
        authCode: '535 5.7.8',
        tempCode: '454 4.7.0',
        privacyTitle: 'AUTH before STARTTLS on the submission listener: 538 5.7.11 (privacy_required)',
        loggedIn: /^235 2\.7\.0 /,
        badCredentials: '535 5.7.8 Authentication credentials invalid',
        privacyRequired: /^538 5\.7\.11 Encryption required/,
        scopeMissing:
          '535 5.7.8 The mailbox was connected without permission to send mail. ' +
          `Reconnect the mailbox at ${CONNECT} to allow this (smtp.send)`,
      },
      /** Same OP; the provider's upstreams.smtp is the fake with SMTP AUTH switched off. */
      async extra(s, _introspectionUrl, cleanup) {
        const fake = await startFakeSmtpUpstream({ tls: 'implicit', accept: new Set(), reject: 'disabled' });
        cleanup(() => fake.close());
        const disabled = await startStack({
          op: s.op,
          dovecot: s.dovecot,
          smtpUpstream: () => ({
            host: fake.host,
            port: fake.port,
            tls: 'implicit',
            ca_file: fake.caFile,
            mechanism: 'xoauth2',
          }),
        });
        cleanup(() => disabled.close());
        return { fake, disabled };
      },
    },
    (t) => {
      test('SMTP AUTH disabled at the provider (fake 5.7.139): 535 5.7.139 + what to enable (protocol_disabled)', async () => {
        const { disabled, fake } = t.extra;
        const a = await disabled.addAccount('no-smtp-auth');
        const reply = await auth(disabled, a.login, a.password);
        assert.match(reply, /^535 5\.7\.139 Authenticated SMTP is switched off/);
        assert.match(reply, /the administrator must enable authenticated SMTP/);
        assert.match(reply, /Set-CASMailbox -SmtpClientAuthenticationDisabled \$false/);
        assert.equal(fake.tokens.length, 1, 'no retry: a fresh token cannot switch SMTP AUTH on');
        assert.equal(await loginCount(disabled, 'smtp', 'protocol_disabled'), 1);
      });
    },
  );
});
