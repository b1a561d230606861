import type { Protocol } from '../config/schema.js';
import type { FailureReason } from '../errors.js';
import type { Logger } from '../log.js';
import type { AuthenticatedUpstream } from './upstream.js';

/**
 * A protocol's name as the config spells it (`listeners[].protocol`). The core never lists
 * them: the config schema's enum and the registry in protocols/ do.
 */
export type ProtocolName = Protocol;

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

/**
 * How the client proved its password, as a bounded label for logs (e.g. `LOGIN`,
 * `AUTHENTICATE PLAIN`, `AUTH LOGIN`, `USER/PASS`); each protocol names its own.
 */
export type LoginMechanism = string;

/** What every front door hands the core once it has a user name and a password. */
export interface LoginRequest {
  readonly protocol: ProtocolName;
  readonly login: string;
  readonly password: string;
  readonly mechanism: LoginMechanism;
  readonly client: ClientInfo;
  /**
   * The front door already promised its client some upstream features (SMTP's EHLO reply):
   * an upstream connection without them is refused before its token is spent.
   */
  readonly upstreamKeeps?: (capabilities: readonly string[]) => boolean;
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

/** What the login runner calls once a front door has a login name and password. Filled by core/pipeline. */
export interface LoginHandler {
  login(req: LoginRequest, signal: AbortSignal): Promise<LoginOutcome>;
}
