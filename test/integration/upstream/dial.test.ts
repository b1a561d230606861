import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { resolveUpstream } from '../../../src/config/presets.js';
import { dial } from '../../../src/net/dial.js';
import { ensureSelfSigned } from '../../../src/net/selfsigned.js';
import { createUpstreamConnector } from '../../../src/protocols/imap/upstream.js';
import { until, withDeadline } from '../../helpers/deadline.js';
import { type FakeUpstream, startFakeUpstream } from '../../helpers/fake-upstream.js';

const labels = { provider: 'dialtest' };
const connector = createUpstreamConnector();

async function listen(
  onConn: (s: Socket) => void,
): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    onConn(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : 0, sockets };
}

describe('dialing upstream', () => {
  let fake: FakeUpstream;
  const servers: { server: Server; sockets: Set<Socket> }[] = [];
  after(async () => {
    await fake?.close();
    for (const s of servers) {
      for (const c of s.sockets) c.destroy();
      await new Promise<void>((r) => s.server.close(() => r()));
    }
  });

  test('connection refused → upstream_unavailable (connect_refused)', async () => {
    const { server, port } = await listen(() => {});
    await new Promise<void>((r) => server.close(() => r()));
    await assert.rejects(connector.connect(resolveUpstream('imap', { host: '127.0.0.1', port }), labels), {
      reason: 'upstream_unavailable',
      detail: 'connect_refused',
    });
  });

  test('a server that accepts but never speaks TLS → upstream_unavailable (connect_timeout), bounded', async () => {
    const s = await listen(() => {});
    servers.push(s);
    const t0 = Date.now();
    await assert.rejects(
      connector.connect(
        resolveUpstream('imap', { host: '127.0.0.1', port: s.port, connect_timeout_seconds: 0.3 }),
        labels,
      ),
      { reason: 'upstream_unavailable', detail: 'connect_timeout' },
    );
    const took = Date.now() - t0;
    assert.ok(took >= 250 && took < 2000, `took ${took} ms`);
  });

  test('an aborted connect settles at once with timeout (aborted)', async () => {
    const s = await listen(() => {});
    servers.push(s);
    const ac = new AbortController();
    const p = connector.connect(
      resolveUpstream('imap', { host: '127.0.0.1', port: s.port }),
      labels,
      ac.signal,
    );
    ac.abort();
    await assert.rejects(p, { reason: 'timeout', detail: 'aborted' });
  });

  test('self-signed upstream without its CA → tls_verify; with the CA file → connects', async () => {
    fake = await startFakeUpstream();
    const base = { host: '127.0.0.1', port: fake.port };
    await assert.rejects(connector.connect(resolveUpstream('imap', base), labels), {
      reason: 'upstream_unavailable',
      detail: 'tls_verify',
    });
    const conn = await connector.connect(resolveUpstream('imap', { ...base, ca_file: fake.caFile }), labels);
    conn.destroy();
  });

  test('certificate name mismatch → tls_verify, even with the right CA', async () => {
    await assert.rejects(
      connector.connect(
        resolveUpstream('imap', {
          host: '127.0.0.1',
          port: fake.port,
          ca_file: fake.caFile,
          servername: 'imap.example.org',
        }),
        labels,
      ),
      { reason: 'upstream_unavailable', detail: 'tls_verify' },
    );
  });

  test('NODE_TLS_REJECT_UNAUTHORIZED=0 does not switch verification off', async () => {
    const saved = process.env.NODE_TLS_REJECT_UNAUTHORIZED;
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
    try {
      await assert.rejects(
        connector.connect(resolveUpstream('imap', { host: '127.0.0.1', port: fake.port }), labels),
        {
          detail: 'tls_verify',
        },
      );
    } finally {
      if (saved === undefined) delete process.env.NODE_TLS_REJECT_UNAUTHORIZED;
      else process.env.NODE_TLS_REJECT_UNAUTHORIZED = saved;
    }
  });

  test('missing ca_file → upstream_unavailable (ca_file), no crash', async () => {
    await assert.rejects(
      connector.connect(
        resolveUpstream('imap', { host: '127.0.0.1', port: fake.port, ca_file: '/nonexistent/ca.pem' }),
        labels,
      ),
      { reason: 'upstream_unavailable', detail: 'ca_file' },
    );
  });

  test('a ca_file that changes on disk is read again: a renewed CA needs no restart', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'ca-reload-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const caFile = join(dir, 'ca.pem');
    // First a CA that did not sign the upstream's certificate (another self-signed pair).
    const other = await ensureSelfSigned(join(dir, 'other'), { name: 'other' });
    writeFileSync(caFile, readFileSync(other.certFile));
    const target = resolveUpstream('imap', {
      host: '127.0.0.1',
      port: fake.port,
      ca_file: caFile,
      servername: 'localhost',
    });
    await assert.rejects(connector.connect(target, labels), {
      reason: 'upstream_unavailable',
      detail: 'tls_verify',
    });
    writeFileSync(caFile, readFileSync(fake.caFile));
    let conn: Awaited<ReturnType<typeof connector.connect>> | undefined;
    await until(
      async () => {
        conn = await connector.connect(target, labels).catch(() => undefined);
        return conn !== undefined;
      },
      15_000,
      'a dial trusting the renewed CA file',
      200,
    );
    conn?.destroy();
  });

  test('TLS sessions are reused on the next connection to the same upstream', async () => {
    const o = {
      host: '127.0.0.1',
      port: fake.port,
      tls: 'implicit' as const,
      caFile: fake.caFile,
      servername: 'localhost',
      timeoutMs: 2000,
    };
    const first = (await dial(o)) as TLSSocket;
    // TLS 1.3 tickets arrive after the handshake; the greeting comes after them.
    await withDeadline(once(first, 'data'), 5000, 'the greeting');
    assert.equal(first.isSessionReused(), false);
    first.destroy();
    const second = (await dial(o)) as TLSSocket;
    assert.equal(second.isSessionReused(), true);
    second.destroy();
  });
});
