import type { Duplex } from 'node:stream';
import { type FailureReason, isProxyError, type LoginResult } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { type SpliceStats, splice } from '../net/splice.js';
import type { LoginHandler, LoginOutcome, LoginRequest, ProtocolName } from './types.js';

export type RunnerMetrics = Pick<Metrics, 'logins' | 'loginSeconds' | 'splicedBytes' | 'splicedSource'>;

export interface LoginRunnerOptions {
  readonly handler: LoginHandler;
  readonly metrics: RunnerMetrics;
  /** Longest a login (token + upstream) may take before it fails with `timeout`. */
  readonly timeoutMs: number;
}

/** A login the core ran to its end; the front door turns it into its protocol's reply. */
export type LoginVerdict =
  | {
      readonly ok: false;
      readonly reason: FailureReason;
      readonly clientText: string | undefined;
      /** The account's label once the password matched (for log lines), else undefined. */
      readonly account: string | undefined;
      readonly ms: number;
    }
  | {
      readonly ok: true;
      readonly account: string;
      /** The upstream's capabilities after login (IMAP answers them in its tagged OK). */
      readonly capabilities: readonly string[];
      readonly ms: number;
      /**
       * Writes the protocol's success reply, forwards the client's pipelined bytes, splices
       * both ways and releases the per-account slot exactly once when the session ends.
       */
      accept(reply: string | Buffer, pipelined: Buffer): Promise<SpliceStats>;
      /** The front door cannot use the session after all (its client left): give it back. */
      decline(): void;
    }
  /** The client went away (or the front door closed) while the login ran; counted as `aborted`. */
  | { readonly ok: 'aborted' };

/**
 * Owns what every protocol does after it has a user name and a password: the login timeout
 * and abort, disposal of outcomes that arrive too late, login metrics, and the hand-over to
 * the splice. Protocol-neutral: the front door only writes replies.
 */
export class LoginRunner {
  private timeoutMs: number;

  constructor(private readonly opts: LoginRunnerOptions) {
    this.timeoutMs = opts.timeoutMs;
  }

  /** A reload's new login timeout, for logins that start from now on. */
  setTimeoutMs(ms: number): void {
    this.timeoutMs = ms;
  }

  /** Counts a login the front door decided itself (e.g. `privacy_required`). */
  count(protocol: ProtocolName, result: LoginResult, seconds: number): void {
    this.opts.metrics.logins.inc({ protocol, result });
    this.opts.metrics.loginSeconds.observe({ protocol, result }, seconds);
  }

  /**
   * Runs one login. `signal` is aborted by the front door when its client goes away;
   * `socket()` names the client stream at hand-over time (it changes after STARTTLS).
   */
  async run(req: LoginRequest, signal: AbortSignal, socket: () => Duplex): Promise<LoginVerdict> {
    const abort = new AbortController();
    const onClientGone = () => abort.abort(signal.reason);
    signal.addEventListener('abort', onClientGone, { once: true });
    const t0 = process.hrtime.bigint();
    // Set by the timer before it settles the race, so a late outcome is always given back.
    let late = false;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<LoginOutcome>((resolve) => {
      timer = setTimeout(() => {
        late = true;
        abort.abort(new Error('login timeout'));
        resolve({ ok: false, reason: 'timeout' });
      }, this.timeoutMs);
    });
    const call = this.call(req, abort.signal).then((o) => {
      if (late) discard(o);
      return o;
    });
    const outcome = await Promise.race([call, timedOut]);
    clearTimeout(timer);
    signal.removeEventListener('abort', onClientGone);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const ms = Math.round(seconds * 1000);
    if (signal.aborted) {
      // The client went away mid-login: count the attempt so abandoned logins are visible.
      this.count(req.protocol, 'aborted', seconds);
      discard(outcome);
      return { ok: 'aborted' };
    }
    this.count(req.protocol, outcome.ok ? 'success' : outcome.reason, seconds);
    if (!outcome.ok) {
      return {
        ok: false,
        reason: outcome.reason,
        clientText: outcome.clientText,
        account: outcome.account,
        ms,
      };
    }
    const { metrics } = this.opts;
    let handed = false;
    return {
      ok: true,
      account: outcome.accountLabel,
      capabilities: outcome.upstream.capabilities,
      ms,
      accept: (reply, pipelined) => {
        if (handed) return Promise.reject(new Error('login already handed over'));
        handed = true;
        const client = socket();
        client.write(reply);
        return splice({
          client,
          upstream: outcome.upstream,
          pipelined,
          protocol: req.protocol,
          metrics,
          release: outcome.release,
        });
      },
      decline: () => {
        if (handed) return;
        handed = true;
        discard(outcome);
      },
    };
  }

  private async call(req: LoginRequest, signal: AbortSignal): Promise<LoginOutcome> {
    try {
      return await this.opts.handler.login(req, signal);
    } catch (err) {
      if (!isProxyError(err)) {
        req.client.log.error({ err }, 'login handler threw');
        return { ok: false, reason: 'upstream_unavailable' };
      }
      return err.clientText
        ? { ok: false, reason: err.reason, clientText: err.clientText }
        : { ok: false, reason: err.reason };
    }
  }
}

/** Gives back an upstream nobody can use any more (a late or abandoned login). */
function discard(outcome: LoginOutcome | undefined): void {
  if (outcome?.ok) {
    outcome.upstream.socket.destroy();
    outcome.release();
  }
}
