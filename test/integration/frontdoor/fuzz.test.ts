import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { RawImapClient } from '../../helpers/imap-client.js';
import { startFrontdoor } from './harness.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 25);

const arbCommand = fc.constantFrom(
  'NOOP',
  'CAPABILITY',
  'ID NIL',
  'ID ("name" {4+}\r\nmutt)',
  'ID ("os" "linux")',
  'SELECT INBOX',
  'NOOP extra',
  'LOGIN',
  'AUTHENTICATE',
);

test('over a real socket: exactly one tagged reply per complete command, in order, however the bytes are chunked', async (t) => {
  const fd = await startFrontdoor(
    { tls: 'none', allow_cleartext_login: true },
    { limits: { badCommands: 100 } },
  );
  t.after(() => fd.close());
  await fc.assert(
    fc.asyncProperty(
      fc.array(arbCommand, { minLength: 1, maxLength: 12 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      async (cmds, cuts) => {
        const c = await RawImapClient.connect(fd.port);
        try {
          await c.readLine();
          const wire = Buffer.from(cmds.map((cmd, i) => `t${i} ${cmd}\r\n`).join(''));
          const points = [...new Set(cuts.map((n) => n % wire.length))].sort((a, b) => a - b);
          let prev = 0;
          for (const p of [...points, wire.length]) {
            if (p > prev) c.write(wire.subarray(prev, p));
            prev = p;
          }
          const tags: string[] = [];
          while (tags.length < cmds.length) {
            const line = await c.readLine();
            if (!line.startsWith('* ')) tags.push(line.split(' ')[0]!);
          }
          assert.deepEqual(
            tags,
            cmds.map((_, i) => `t${i}`),
          );
          c.write('z NOOP\r\n');
          assert.equal(await c.readLine(), 'z OK NOOP completed', 'no extra reply was queued');
        } finally {
          c.close();
        }
      },
    ),
    { numRuns: RUNS },
  );
});
