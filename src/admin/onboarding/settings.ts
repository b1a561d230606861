import type { AddressInfo } from 'node:net';
import type { Config, Protocol } from '../../config/schema.js';
import { esc } from './html.js';

/** The heading a mail program's account dialog uses for each protocol's server. */
const HEADINGS: Record<Protocol, string> = {
  imap: 'Incoming mail (IMAP)',
  pop3: 'Incoming mail (POP3)',
  smtp: 'Outgoing mail (SMTP)',
};

/**
 * Mail client settings, one table per protocol the listeners speak, listing only TLS listeners
 * (a user should never be told to send the app password in cleartext).
 */
export function clientSettingsHtml(
  config: Config,
  username: string,
  addresses: Record<string, AddressInfo>,
): string {
  // imap_host keeps its name from when IMAP was the only protocol: it is the host for all of them.
  const host =
    config.admin.imap_host ??
    (config.admin.public_url ? new URL(config.admin.public_url).hostname : 'localhost');
  const tables = (Object.keys(HEADINGS) as Protocol[]).flatMap((protocol) => {
    const ports = config.listeners
      .filter((l) => l.protocol === protocol && l.tls !== 'none')
      .map((l) => {
        const port = l.port === 0 ? (addresses[l.name]?.port ?? 0) : l.port;
        const security = l.tls === 'implicit' ? 'SSL/TLS' : 'STARTTLS';
        return `<tr><th>Port</th><td>${esc(port)}</td><td>${esc(security)}</td></tr>`;
      });
    if (ports.length === 0) return [];
    return [
      `<h3>${esc(HEADINGS[protocol])}</h3>
<table id="settings-${esc(protocol)}">
<tr><th>Server</th><td colspan="2">${esc(host)}</td></tr>
${ports.join('\n')}
<tr><th>Username</th><td colspan="2">${esc(username)}</td></tr>
<tr><th>Password</th><td colspan="2">the app password above</td></tr>
<tr><th>Authentication</th><td colspan="2">normal password</td></tr>
</table>`,
    ];
  });
  return tables.length > 0
    ? tables.join('\n')
    : '<p>Ask your administrator for the server name and port to enter in your mail program.</p>';
}
