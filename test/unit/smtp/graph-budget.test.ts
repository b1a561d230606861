import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BudgetSink, InflightBudget } from '../../../src/protocols/smtp/graph-upstream.js';
import type { TransactionReply } from '../../../src/protocols/smtp/transaction.js';
import { until } from '../../helpers/deadline.js';
import { connectSmtp, type SmtpClient } from '../../helpers/smtp-client.js';
import { sessionOptions, transactionServer } from '../../helpers/smtp-transaction.js';

// limits.graph_inflight_bytes: message bytes held by every Graph-delivery session of a process
// together. Sessions here are real SMTP transactions over loopback; delivery is held open by the
// test so the bytes stay in flight.

const LIMIT = 1_000_000;
const budget = new InflightBudget(() => LIMIT);
const held: Array<(r: TransactionReply) => void> = [];
let server: Awaited<ReturnType<typeof transactionServer>>;

before(async () => {
  server = await transactionServer(() =>
    sessionOptions(
      new BudgetSink(budget, () => new Promise<TransactionReply>((resolve) => held.push(resolve))),
      { maxMessageBytes: 5_000_000 },
    ),
  );
});
after(async () => {
  for (const r of held) r({ code: 451, enhanced: '4.3.0', text: 'test over' });
  await server.close();
});

async function client(): Promise<SmtpClient> {
  const c = await connectSmtp({ host: '127.0.0.1', port: server.port, tls: 'none', timeoutMs: 10_000 });
  assert.equal((await c.ehlo('dev.example.net')).code, 250);
  return c;
}

function body(bytes: number): Buffer {
  return Buffer.from(`Subject: x\r\n\r\n${'z'.repeat(78)}\r\n`.repeat(Math.ceil(bytes / 94)));
}

async function data(c: SmtpClient, msg: Buffer, mail = 'MAIL FROM:<a@example.com>'): Promise<void> {
  assert.equal((await c.command(mail)).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(Buffer.concat([msg, Buffer.from('.\r\n')]));
}

test('messages beyond the in-flight budget get 452 4.3.1 and the budget comes back once they are answered', async () => {
  const a = await client();
  const first = body(600_000);
  await data(a, first);
  await until(() => held.length === 1, 5000, 'the first message to reach delivery');
  assert.ok(budget.inUse >= first.length && budget.inUse < first.length + 10_000, `in use ${budget.inUse}`);

  const b = await client();
  // A declared size that does not fit is refused at MAIL, before any byte is sent.
  const declared = await b.command('MAIL FROM:<a@example.com> SIZE=600000');
  assert.equal(`${declared.code} ${declared.lines[0]?.slice(0, 5)}`, '452 4.3.1', declared.text);
  // Undeclared: refused when the bytes pass the budget, answered at the end of DATA.
  await data(b, body(600_000));
  const r = await b.reply(5000);
  assert.equal(`${r.code} ${r.lines[0]?.slice(0, 5)}`, '452 4.3.1', r.text);
  assert.equal(held.length, 1, 'the refused message never reached delivery');
  assert.ok(budget.inUse < first.length + 10_000, 'the refused message holds nothing');

  held.shift()!({ code: 250, enhanced: '2.0.0', text: 'ok' });
  assert.equal((await a.reply(5000)).code, 250);
  await until(() => budget.inUse === 0, 5000, 'the budget to come back');

  // The device retries and now it fits.
  await data(b, body(600_000), 'MAIL FROM:<a@example.com> SIZE=600000');
  await until(() => held.length === 1, 5000, 'the retried message to reach delivery');
  held.shift()!({ code: 250, enhanced: '2.0.0', text: 'ok' });
  assert.equal((await b.reply(5000)).code, 250);
  await until(() => budget.inUse === 0, 5000, 'the budget to come back');
  a.close();
  b.close();
});

test('a client gone mid-DATA gives its bytes back', async () => {
  const c = await client();
  assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
  assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.send(body(300_000));
  await until(() => budget.inUse > 200_000, 5000, 'the bytes to be held');
  c.close();
  await until(() => budget.inUse === 0, 5000, 'the budget to come back');
});
