/**
 * Takes every form a password can take on the wire out of a transcript: the password itself,
 * its base64 (AUTHENTICATE LOGIN), the PLAIN blobs with and without authzid, and any
 * AUTHENTICATE initial response or LOGIN argument the client printed.
 */
export function redact(text: string, user: string, secrets: string[]): string {
  let out = text;
  const forms = new Set<string>();
  for (const s of secrets) {
    if (!s) continue;
    forms.add(s);
    forms.add(b64(s));
    forms.add(b64(`\0${user}\0${s}`));
    forms.add(b64(`${user}\0${user}\0${s}`));
  }
  for (const f of [...forms].sort((a, b) => b.length - a.length)) out = out.split(f).join('<redacted>');
  return out
    .replace(/(AUTHENTICATE (?:PLAIN|LOGIN|XOAUTH2|OAUTHBEARER) )[A-Za-z0-9+/=]{8,}/gi, '$1<redacted>')
    .replace(
      /(^|[\s'"])([A-Za-z0-9]+ LOGIN +"?[^\s"]+"? +)(?!<redacted>|\*)("[^"\r\n]*"|\S+)/gm,
      '$1$2<redacted>',
    );
}

function b64(s: string): string {
  return Buffer.from(s, 'utf8').toString('base64');
}
