import type { Config } from './schema.js';

/**
 * What check-config tells an admin about choices that are valid but have consequences: how
 * each provider's SMTP logins send mail.
 */
export function configNotes(config: Config): string[] {
  if (!config.listeners.some((l) => l.protocol === 'smtp')) return [];
  const notes: string[] = [];
  for (const [name, p] of Object.entries(config.providers)) {
    if (p.smtp_delivery === 'graph') {
      notes.push(
        `providers.${name}.smtp_delivery: graph — the proxy answers MAIL, RCPT and DATA itself and sends each message with Microsoft Graph (${p.graph_url}); works when SMTP AUTH is switched off for the tenant. The client gets 250 only after Graph accepted the message (202). Needs the Graph permission Mail.Send, and Mail.ReadWrite for messages over 3 MB or graph_save_to_sent_items: false. Graph sends as the mailbox: DSN requests are not offered, and messages over ${p.graph_max_message_bytes} bytes are refused.`,
      );
    } else {
      notes.push(
        `providers.${name}.smtp_delivery: smtp — after AUTH XOAUTH2 at ${p.upstreams?.smtp?.host ?? 'the upstream'} the session is spliced byte for byte: every extension the server has, nothing held by the proxy. Fails with 535 5.7.139 where the tenant or mailbox has SMTP AUTH switched off; smtp_delivery: graph works there.`,
      );
    }
  }
  return notes;
}
