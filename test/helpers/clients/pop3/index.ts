import { curl } from './curl.js';
import { fetchmail } from './fetchmail.js';
import { getmail } from './getmail.js';
import { mpop } from './mpop.js';
import { poplib } from './poplib.js';
import type { Pop3ClientDriver } from './types.js';

export type {
  Pop3ClientDriver,
  Pop3Job,
  Pop3Limitation,
  Pop3Mechanism,
  Pop3Run,
  Pop3Transport,
  Pop3Way,
} from './types.js';
export { curl, fetchmail, getmail, mpop, poplib };

/** Every real POP3 client the interop matrix drives. */
export const POP3_CLIENTS: Pop3ClientDriver[] = [curl, poplib, fetchmail, mpop, getmail];
