import { curl } from './curl.js';
import { fetchmail } from './fetchmail.js';
import { imapflow } from './imapflow.js';
import { imaplib } from './imaplib.js';
import { mbsync } from './mbsync.js';
import { mutt, neomutt } from './mutt.js';
import { offlineimap } from './offlineimap.js';
import type { ClientDriver } from './types.js';

export type { ClientDriver, ClientJob, ClientRun, ClientTransport, LoginWay } from './types.js';
export { curl, fetchmail, imapflow, imaplib, mbsync, mutt, neomutt, offlineimap };

/** Every real client the interop matrix drives. */
export const ALL_CLIENTS: ClientDriver[] = [
  curl,
  imaplib,
  fetchmail,
  mbsync,
  offlineimap,
  mutt,
  neomutt,
  imapflow,
];
