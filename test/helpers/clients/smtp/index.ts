import { curl } from './curl.js';
import { msmtp } from './msmtp.js';
import { mutt, neomutt } from './mutt.js';
import { smtplib } from './smtplib.js';
import { snail } from './snail.js';
import { swaks } from './swaks.js';
import type { SmtpClientDriver } from './types.js';

export type { SmtpClientDriver, SmtpInput, SmtpJob, SmtpRun, SmtpTransport, SmtpWay } from './types.js';
export { curl, msmtp, mutt, neomutt, smtplib, snail, swaks };

/** Every real SMTP client the interop matrix drives. */
export const SMTP_CLIENTS: SmtpClientDriver[] = [swaks, msmtp, curl, smtplib, mutt, neomutt, snail];
