import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { Keyring } from '../../../src/store/crypto.js';
import { MIGRATIONS } from '../../../src/store/migrations.js';
import { SqliteGrantStore } from '../../../src/store/sqlite.js';
import { grant, grantStoreContract } from '../../helpers/store-contract.js';

const dir = mkdtempSync(join(tmpdir(), 'iop-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const dbPath = () => join(dir, `s${n++}.db`);

describe('SqliteGrantStore', () => {
  grantStoreContract({
    async fresh(keyring) {
      const path = dbPath();
      return {
        store: await SqliteGrantStore.open(path, keyring),
        reopen: (k) => SqliteGrantStore.open(path, k),
        async copyRefreshTokenCipher(from, to) {
          const db = new Database(path);
          db.prepare(
            'UPDATE grants SET refresh_token_enc = (SELECT refresh_token_enc FROM grants WHERE account_id = ?) WHERE account_id = ?',
          ).run(from, to);
          db.close();
        },
      };
    },
  });

  test('migrations are recorded once across reopenings; file is 0600', async () => {
    const path = dbPath();
    const k = Keyring.random();
    const s1 = await SqliteGrantStore.open(path, k);
    await s1.migrate();
    await s1.close();
    const s2 = await SqliteGrantStore.open(path, k);
    await s2.close();
    const db = new Database(path, { readonly: true });
    const rows = db.prepare('SELECT version FROM schema_migrations').all();
    db.close();
    assert.deepEqual(
      rows,
      MIGRATIONS.map((m) => ({ version: m.version })),
    );
    assert.equal(statSync(path).mode & 0o777, 0o600);
  });

  test('the database file and WAL hold no plaintext token', async () => {
    const sub = mkdtempSync(join(dir, 'scan-'));
    const s = await SqliteGrantStore.open(join(sub, 'p.db'), Keyring.random());
    const a = await s.createAccount({ login: 'a', upstreamUser: 'a@example.com', provider: 'p' }, 'cli');
    const rt = `RT-${randomBytes(12).toString('hex')}`;
    const at = `AT-${randomBytes(12).toString('hex')}`;
    await s.putGrant(a.id, grant({ refreshToken: rt, accessToken: at }), 'cli');
    // Scan while open (WAL populated) and after close (checkpointed into the main file).
    const scan = () => {
      for (const f of readdirSync(sub)) {
        const bytes = readFileSync(join(sub, f));
        assert.equal(bytes.includes(rt), false, `refresh token found in ${f}`);
        assert.equal(bytes.includes(at), false, `access token found in ${f}`);
      }
    };
    assert.ok(readdirSync(sub).some((f) => f.endsWith('-wal')));
    scan();
    await s.close();
    scan();
  });
});
