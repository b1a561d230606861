import type { PreauthState } from '../../net/preauth.js';

/** IMAP's pre-auth states are the shared ones (see net/preauth.ts). */
export type SessionState = PreauthState;
