import { createServer } from 'node:net';

/**
 * A loopback port that was free a moment ago: for servers that must be told a port up front
 * (Dovecot, a spawned proxy) and as a "connection refused" target. Retry on EADDRINUSE.
 */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}
