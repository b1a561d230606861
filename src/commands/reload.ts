import { request } from 'node:http';
import { loadConfig } from '../config/load.js';
import { ConfigError, messageOf } from '../errors.js';

const TIMEOUT_MS = 60_000;

/**
 * `imap-oauth-proxy reload`: asks the running proxy (POST /reload on its admin port, as `admin`
 * with admin.admin_password) to re-read its config and certificates, and prints the outcome.
 * Without an admin password, SIGHUP (`systemctl reload`, `kill -HUP`) does the same.
 */
export async function runReload(
  configFile: string,
  io: { out: (s: string) => void; err: (s: string) => void },
) {
  const { config } = loadConfig(configFile);
  const password = config.admin.admin_password;
  if (!password) {
    throw new ConfigError(
      `${configFile}: admin.admin_password is not set, so the admin port takes no reload requests; send SIGHUP to the proxy instead (systemctl reload imap-oauth-proxy, or kill -HUP <pid>)`,
    );
  }
  const host = ['0.0.0.0', '::', ''].includes(config.admin.address) ? '127.0.0.1' : config.admin.address;
  const auth = Buffer.from(`admin:${password}`).toString('base64');
  const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(
      {
        host,
        port: config.admin.port,
        method: 'POST',
        path: '/reload',
        headers: { authorization: `Basic ${auth}` },
      },
      (r) => {
        let body = '';
        r.setEncoding('utf8');
        r.on('data', (d: string) => {
          body += d;
        });
        r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
      },
    );
    req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)));
    req.on('error', reject);
    req.end();
  }).catch((err: unknown) => {
    throw new ConfigError(
      `cannot reach the proxy's admin port ${host}:${config.admin.port}: ${messageOf(err)}`,
    );
  });
  if (res.status === 401 || res.status === 403 || res.status === 429) {
    io.err(`reload refused by the proxy (HTTP ${res.status}): check admin.admin_password`);
    return 1;
  }
  let outcome: { result?: string; problems?: string[]; restartNeeded?: string[] };
  try {
    outcome = JSON.parse(res.body) as typeof outcome;
  } catch {
    io.err(`unexpected answer from the proxy (HTTP ${res.status})`);
    return 1;
  }
  for (const p of outcome.problems ?? []) io.err(p);
  if ((outcome.restartNeeded ?? []).length > 0)
    io.err(`changed but only applied after a restart: ${(outcome.restartNeeded ?? []).join(', ')}`);
  if (outcome.result === 'success') {
    io.out('reloaded');
    return 0;
  }
  io.err(
    outcome.result === 'invalid'
      ? 'reload refused: the config does not validate; the running config stays'
      : 'reloaded in part',
  );
  return 1;
}
