import type { FailureReason } from '../errors.js';
import type { Logger } from '../log.js';
import type { AuthenticatedUpstream } from './upstream.js';

export interface ClientInfo {
  /** Connection id for logs. */
  readonly cid: string;
  /** Real client address (from PROXY protocol when the peer is trusted). */
  readonly address: string;
  readonly port: number;
  readonly listener: string;
  /** The connection is encrypted now (implicit TLS or after STARTTLS). */
  readonly secure: boolean;
  readonly log: Logger;
}

export type LoginMechanism = 'LOGIN' | 'AUTHENTICATE PLAIN' | 'AUTHENTICATE LOGIN';

export interface LoginRequest {
  readonly login: string;
  readonly password: string;
  readonly mechanism: LoginMechanism;
  readonly client: ClientInfo;
}

export type LoginOutcome =
  | {
      ok: true;
      upstream: AuthenticatedUpstream;
      /** Called exactly once when the spliced session ends (frees the per-account slot). */
      release: () => void;
      accountLabel: string;
    }
  | {
      ok: false;
      reason: FailureReason;
      clientText?: string;
      /** The account, when the password matched (for the session's log lines; never a label). */
      account?: string;
    };

/** What the front door calls once it has a login name and password. Filled by proxy/. */
export interface LoginHandler {
  login(req: LoginRequest, signal: AbortSignal): Promise<LoginOutcome>;
}
