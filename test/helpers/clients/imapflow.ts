import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { ImapFlow } from 'imapflow';
import type { ClientDriver } from './types.js';

const require = createRequire(import.meta.url);

/** imapflow 2.1.2, in-process; `loginMethod: 'LOGIN'` forces the LOGIN command. */
export const imapflow: ClientDriver = {
  name: 'imapflow',
  storesLf: false,
  ways: ['login'],
  version: async () => `imapflow ${(require('imapflow/package.json') as { version: string }).version}`,
  async fetch(job) {
    const lines: string[] = [];
    const log = (level: string) => (o: unknown) => lines.push(`${level} ${JSON.stringify(o)}`);
    const logger = { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
    const implicit = job.transport === 'implicit';
    const c = new ImapFlow({
      host: job.host,
      port: job.port,
      secure: implicit,
      doSTARTTLS: implicit ? undefined : true,
      auth: { user: job.user, pass: job.password, ...(job.way === 'login' ? { loginMethod: 'LOGIN' } : {}) },
      tls: { ca: [readFileSync(job.caFile)], rejectUnauthorized: true },
      logger,
      connectionTimeout: job.timeoutMs,
    });
    c.on('error', (e: Error) => lines.push(`error event ${e.message}`));
    try {
      await c.connect();
      const lock = await c.getMailboxLock('INBOX');
      let message: Buffer | undefined;
      try {
        const msg = await c.fetchOne(String(job.uid), { source: true }, { uid: true });
        message = msg ? msg.source : undefined;
      } finally {
        lock.release();
      }
      await c.logout();
      return { message, transcript: lines.join('\n') };
    } catch (err) {
      c.close();
      return { transcript: lines.join('\n'), error: `imapflow: ${(err as Error).message}` };
    }
  },
};
