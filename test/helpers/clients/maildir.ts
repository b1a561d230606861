import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The one message a sync client stored in a Maildir folder (cur/ or new/), if exactly one. */
export function onlyMaildirMessage(folder: string): Buffer | undefined {
  const files = ['cur', 'new']
    .map((d) => join(folder, d))
    .filter((d) => existsSync(d))
    .flatMap((d) => readdirSync(d).map((f) => join(d, f)));
  return files.length === 1 ? readFileSync(files[0]!) : undefined;
}
