/**
 * A proxy's token broker and grant store in a process of its own, forcing refreshes of every
 * account in a loop until it is killed (rotation-crash.test.ts). Env: STORE (a SQLite path or
 * a postgres:// URL), STORE_KEY (keyring line), OP_ISSUER, OP_CLIENT_ID, OP_CLIENT_SECRET.
 * Prints "ready" once the store is open, then one "ok <accountId>" line per refresh.
 * MODE=hold instead takes the first account's grant lock, prints "held" and never lets go.
 */
import { createHash } from 'node:crypto';
import { writeSync } from 'node:fs';
import { providerSchema } from '../../../src/config/schema.js';
import { OAuthTokenBroker } from '../../../src/oauth/broker.js';
import { createProviderRegistry } from '../../../src/oauth/provider.js';
import { Keyring, parseKeyLine } from '../../../src/store/crypto.js';
import { PostgresGrantStore } from '../../../src/store/postgres.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import type { GrantStore } from '../../../src/store/types.js';

function env(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`rotation-child: ${name} is not set`);
  return v;
}

/** Tokens are traced by a short hash; op.ts records the same hash for each rotation. */
const short = (token: string) => createHash('sha256').update(token).digest('hex').slice(0, 12);
/** Written synchronously: a line is out before the next step, so a SIGKILL cannot lose it. */
const trace = (line: string) => {
  const bytes = Buffer.from(`${line} ${Date.now()}\n`);
  for (let off = 0; off < bytes.length; ) {
    try {
      off += writeSync(2, bytes, off);
    } catch (err) {
      // A full pipe (the test reads it): try again rather than lose the line.
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
  }
};

// "arrived <new token>": a response carrying a rotated refresh token reached this process in full.
const fetchOnce = globalThis.fetch;
globalThis.fetch = async (input, init) => {
  const res = await fetchOnce(input, init);
  if (init?.body instanceof URLSearchParams && init.body.has('refresh_token') && res.ok) {
    const body = (await res.clone().json()) as { refresh_token?: unknown };
    if (typeof body.refresh_token === 'string') trace(`arrived ${short(body.refresh_token)}`);
  }
  return res;
};

const target = env('STORE');
const keyring = new Keyring([parseKeyLine(env('STORE_KEY'), 'STORE_KEY')]);
const store: GrantStore = target.startsWith('postgres')
  ? await PostgresGrantStore.open(target, keyring)
  : await SqliteGrantStore.open(target, keyring);
const broker = new OAuthTokenBroker({
  store,
  providers: createProviderRegistry({
    op: providerSchema.parse({
      issuer: env('OP_ISSUER'),
      client_id: env('OP_CLIENT_ID'),
      client_secret: env('OP_CLIENT_SECRET'),
      allow_insecure_http: true,
      timeout_seconds: 5,
    }),
  }),
  tokens: {
    refresh_before_seconds: 300,
    refresh_before_fraction: 0.1,
    cache_entries: 100,
    credential_cache_seconds: 300,
  },
  backoff: { initialMs: 20, maxMs: 50 },
});
// "committed <account> <token>": the early save of a rotated refresh token returned.
const withGrantLock = store.withGrantLock.bind(store);
store.withGrantLock = (accountId, fn) =>
  withGrantLock(accountId, (tx) => {
    const commit = tx.commitRefreshToken?.bind(tx);
    if (!commit) return fn(tx);
    return fn({
      get: () => tx.get(),
      update: (patch) => tx.update(patch),
      commitRefreshToken: async (refreshToken) => {
        await commit(refreshToken);
        trace(`committed ${accountId} ${short(refreshToken)}`);
      },
    });
  });
process.stdout.write('ready\n');
if (process.env.MODE === 'hold') {
  const [first] = await store.listAccounts();
  if (!first) throw new Error('rotation-child: no account');
  await store.withGrantLock(first.id, async () => {
    process.stdout.write('held\n');
    await new Promise(() => undefined);
  });
}
const once = process.env.ONCE === '1';
await Promise.all(
  (await store.listAccounts()).map(async (account) => {
    for (;;) {
      try {
        await broker.getAccessToken(account, { forceRefresh: true });
        process.stdout.write(`ok ${account.id}\n`);
        if (once) return;
      } catch (err) {
        process.stdout.write(`fail ${account.id} ${(err as Error).message}\n`);
        if (once) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }),
);
await store.close();
