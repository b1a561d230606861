import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { startDovecot } from '../../helpers/dovecot.js';
import { CONNECT, failureTable, tableLogin } from '../../helpers/failure-table.js';
import { connectPop3, type Pop3Client } from '../../helpers/pop3-client.js';
import { loginCount, startStack, upstreamAuthCount } from '../../helpers/stack.js';

// Every row of the POP3 reply table, end to end on real components (oidc-provider, Dovecot
// POP3). No fakes: the mailbox lock is Dovecot's own pop3_lock_session.

/** USER and PASS, over implicit TLS unless `cleartext`; returns PASS's reply line. */
const login = tableLogin({
  connect: connectPop3,
  ports: (s) => [s.ports.pop3, s.ports.pop3s],
  async login(c, user, password) {
    assert.match(c.greeting, /^\+OK /);
    const u = await c.command(`USER ${user}`);
    // Refused before PASS: that is the answer.
    if (!u.startsWith('+OK')) return { reply: u, ok: false };
    const reply = await c.command(`PASS ${password}`, 15_000);
    return { reply, ok: reply.startsWith('+OK') };
  },
});

describe('what a POP3 client is told when a login fails, row by row (real OP and Dovecot POP3)', () => {
  failureTable(
    {
      protocol: 'pop3',
      login,
      requiredScope: 'https://mail.example.test/pop3.read',
      replies: {
        authCode: '-ERR [AUTH]',
        tempCode: '-ERR [SYS/TEMP]',
        privacyTitle:
          'USER on the cleartext start of the STLS listener: -ERR [AUTH] use STLS (privacy_required)',
        loggedIn: '+OK Logged in',
        badCredentials: '-ERR [AUTH] Invalid credentials',
        privacyRequired: '-ERR [AUTH] Use STLS or implicit TLS before logging in',
        scopeMissing:
          '-ERR [AUTH] The mailbox was connected without permission for POP3. ' +
          `Reconnect the mailbox at ${CONNECT} to allow this (pop3.read)`,
      },
      /** Same OP; its Dovecot lets one POP3 session at a time hold a mailbox. */
      async extra(s, introspectionUrl, cleanup) {
        const dovecot = await startDovecot({
          introspectionUrl,
          extraConfig: 'protocol pop3 {\n  pop3_lock_session = yes\n}\n',
        });
        cleanup(() => dovecot.stop());
        // Dovecot waits up to ~15 s for the POP3 session lock before it answers [IN-USE].
        const locking = await startStack({
          op: s.op,
          dovecot,
          pop3Upstream: () => ({ auth_timeout_seconds: 25 }),
        });
        cleanup(() => locking.close());
        return { locking };
      },
    },
    (t) => {
      test('mailbox locked by a first POP3 session held open through the proxy: -ERR [IN-USE] (mailbox_in_use)', async () => {
        const { locking } = t.extra;
        const a = await locking.addAccount('locked');
        let first: Pop3Client | undefined;
        assert.equal(
          await login(locking, a.login, a.password, {
            hold: (c) => {
              first = c;
              t.hold(c);
            },
          }),
          '+OK Logged in',
        );
        // The first session really holds the maildrop: it answers a transaction command.
        assert.match(await first!.command('STAT'), /^\+OK \d+ \d+$/);
        assert.equal(
          await login(locking, a.login, a.password),
          '-ERR [IN-USE] Mailbox in use by another session; try again later',
        );
        assert.equal(await loginCount(locking, 'pop3', 'mailbox_in_use'), 1);
        assert.equal(
          await upstreamAuthCount(locking, 'pop3', 'mailbox_in_use'),
          1,
          'no retry: the lock outlasts a retry',
        );
        // Once the first session ends, the same mailbox logs in again.
        assert.match(await first!.command('QUIT'), /^\+OK/);
        await first!.closed(10_000);
        assert.equal(await login(locking, a.login, a.password), '+OK Logged in');
      });
    },
  );
});
