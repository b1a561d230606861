import type { AddressInfo } from 'node:net';
import type { Config } from '../../config/schema.js';
import { esc } from './html.js';

/** Mail client settings for the listeners a user should use (TLS ones only). */
export function clientSettingsHtml(
  config: Config,
  username: string,
  addresses: Record<string, AddressInfo>,
): string {
  const host =
    config.admin.imap_host ??
    (config.admin.public_url ? new URL(config.admin.public_url).hostname : 'localhost');
  const rows = config.listeners
    .filter((l) => l.tls !== 'none')
    .map((l) => {
      const port = l.port === 0 ? (addresses[l.name]?.port ?? 0) : l.port;
      const security = l.tls === 'implicit' ? 'SSL/TLS' : 'STARTTLS';
      return `<tr><td>${esc(security)}</td><td>${esc(port)}</td></tr>`;
    })
    .join('');
  return `<table>
<tr><th>Incoming mail (IMAP) server</th><td>${esc(host)}</td></tr>
<tr><th>Username</th><td>${esc(username)}</td></tr>
<tr><th>Password</th><td>the app password above</td></tr>
<tr><th>Authentication</th><td>normal password</td></tr>
</table>
<table><tr><th>Connection security</th><th>Port</th></tr>${rows}</table>`;
}
