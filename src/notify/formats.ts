import type { WebhookConfig } from '../config/schema.js';
import type { GrantEvent } from './event.js';

/** A request body and the headers its receiver needs to read it. */
export interface Rendered {
  body: string;
  headers: Record<string, string>;
}

const JSON_TYPE = { 'content-type': 'application/json' };

/** One line a person reads: what happened to which mailbox, and what to do. */
export function summary(e: GrantEvent): { title: string; text: string } {
  if (e.event === 'grant.recovered') {
    return {
      title: `Mailbox ${e.mailbox} reconnected`,
      text: `The grant for ${e.mailbox} (login ${e.login}, provider ${e.provider}) works again.`,
    };
  }
  const why = e.reason ? ` Reason: ${e.reason}.` : '';
  const where = e.reconnectUrl
    ? ` Reconnect it at ${e.reconnectUrl}`
    : ' An administrator must reconnect it.';
  return {
    title: `Mailbox ${e.mailbox} needs to be reconnected`,
    text: `The grant for ${e.mailbox} (login ${e.login}, provider ${e.provider}) was refused by the provider; its logins fail until it is reconnected.${why}${where}`,
  };
}

/**
 * Bodies by format. json: the event itself (snake_case). slack: `{text}` (Slack incoming
 * webhooks). teams: a message with one Adaptive Card TextBlock (Teams workflow webhooks).
 * ntfy: the text as a plain body, the title in the Title header.
 */
export function render(format: WebhookConfig['format'], e: GrantEvent): Rendered {
  const { title, text } = summary(e);
  switch (format) {
    case 'json':
      return {
        body: JSON.stringify({
          id: e.id,
          event: e.event,
          time: e.time,
          login: e.login,
          mailbox: e.mailbox,
          provider: e.provider,
          reason: e.reason,
          reconnect_url: e.reconnectUrl,
        }),
        headers: JSON_TYPE,
      };
    case 'slack':
      return { body: JSON.stringify({ text: `*${title}*\n${text}` }), headers: JSON_TYPE };
    case 'teams':
      return {
        body: JSON.stringify({
          type: 'message',
          attachments: [
            {
              contentType: 'application/vnd.microsoft.card.adaptive',
              content: {
                type: 'AdaptiveCard',
                $schema: 'http://adaptivecards.io/schemas/adaptive-card.json',
                version: '1.4',
                body: [
                  { type: 'TextBlock', text: title, weight: 'Bolder', wrap: true },
                  { type: 'TextBlock', text, wrap: true },
                ],
              },
            },
          ],
        }),
        headers: JSON_TYPE,
      };
    case 'ntfy': {
      const needs = e.event === 'grant.needs_consent';
      return {
        body: text,
        headers: {
          'content-type': 'text/plain; charset=utf-8',
          // Header values must stay ASCII: a non-ASCII mailbox name is percent-encoded.
          title: asciiHeader(title),
          tags: needs ? 'warning' : 'white_check_mark',
          priority: needs ? 'high' : 'default',
          ...(needs && e.reconnectUrl ? { click: e.reconnectUrl } : {}),
        },
      };
    }
  }
}

function asciiHeader(v: string): string {
  return v.replace(/[^\x20-\x7e]/g, (c) => encodeURIComponent(c));
}
