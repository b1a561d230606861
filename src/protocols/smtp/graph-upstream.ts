import { hostname } from 'node:os';
import type { Config } from '../../config/schema.js';
import type {
  AuthenticatedUpstream,
  TokenRenewal,
  UpstreamConnection,
  UpstreamConnector,
  UpstreamTarget,
} from '../../core/upstream.js';
import type { Logger } from '../../log.js';
import type { Metrics } from '../../metrics.js';
import { duplexPair } from '../../net/duplex-pair.js';
import { GraphDeliverer } from './graph/deliver.js';
import {
  type MessageSink,
  runTransactions,
  type TransactionReply,
  transactionExtensions,
} from './transaction.js';

/** How long an authenticated Graph-delivery session may sit between commands (RFC 5321 §4.5.3.2: 5 min). */
const SESSION_IDLE_MS = 300_000;

const OVER_BUDGET: TransactionReply = {
  code: 452,
  enhanced: '4.3.1',
  text: 'Too many messages in transit; try again shortly',
};

/**
 * Message bytes held in memory by every Graph-delivery session of this process together. A
 * message that would pass the limit is refused with 452 4.3.1 (the client retries later).
 */
export class InflightBudget {
  private used = 0;
  constructor(private readonly limit: () => number) {}

  take(bytes: number): boolean {
    if (bytes > 0 && this.used + bytes > this.limit()) return false;
    this.used += bytes;
    return true;
  }

  give(bytes: number): void {
    this.used = Math.max(0, this.used - bytes);
  }

  get inUse(): number {
    return this.used;
  }
}

/**
 * One session's side of the budget: its message uses the larger of what MAIL's SIZE= declared
 * and what it holds so far.
 */
export class BudgetSink implements MessageSink {
  private reserved = 0;
  private counted = 0;
  private used = 0;
  constructor(
    private readonly budget: InflightBudget,
    readonly deliver: MessageSink['deliver'],
  ) {}

  reserve(declaredSize: number): TransactionReply | undefined {
    this.release();
    if (!this.budget.take(declaredSize)) return OVER_BUDGET;
    this.reserved = declaredSize;
    this.used = declaredSize;
    return undefined;
  }

  hold(bytes: number): TransactionReply | undefined {
    const counted = Math.max(0, this.counted + bytes);
    const used = Math.max(this.reserved, counted);
    if (used > this.used && !this.budget.take(used - this.used)) return OVER_BUDGET;
    if (used < this.used) this.budget.give(this.used - used);
    this.counted = counted;
    this.used = used;
    return undefined;
  }

  release(): void {
    this.budget.give(this.used);
    this.reserved = 0;
    this.counted = 0;
    this.used = 0;
  }
}

interface GraphConnectorDeps {
  metrics: Metrics;
  log: Logger;
  limits: Config['limits'];
}

/**
 * The "upstream" of a `smtp_delivery: graph` provider: nothing to dial. After the front door's
 * AUTH succeeds, its bytes are spliced into an in-process pair whose far end runs the SMTP mail
 * transaction and hands every message to Microsoft Graph.
 */
export function createGraphConnector(deps: GraphConnectorDeps): UpstreamConnector {
  const budget = new InflightBudget(() => deps.limits.graph_inflight_bytes);
  const deliverer = new GraphDeliverer({ metrics: deps.metrics, log: deps.log });
  const serverName = hostname();
  return {
    async connect(target: UpstreamTarget, labels: { provider: string }): Promise<UpstreamConnection> {
      const graph = target.graph;
      if (!graph) throw new Error('not a Graph delivery target');
      const capabilities = transactionExtensions(graph.maxMessageBytes);
      let open = true;
      return {
        capabilities,
        get reusable() {
          return open;
        },
        destroy: () => {
          open = false;
        },
        recycle: () => {
          open = false;
        },
        async authenticate(
          user: string,
          accessToken: string,
          renew?: TokenRenewal,
        ): Promise<AuthenticatedUpstream> {
          open = false;
          const [near, far] = duplexPair();
          // Each message asks the broker (cached, refreshed ahead): a session may outlive its login's token.
          const tokens = renew ?? (async () => accessToken);
          const log = deps.log.child({ provider: labels.provider, delivery: 'graph' });
          const gt = {
            provider: labels.provider,
            baseUrl: graph.url,
            mailbox: user,
            saveToSentItems: graph.saveToSentItems,
            timeoutMs: graph.timeoutMs,
          };
          const sink = new BudgetSink(budget, (envelope, message, size, signal) =>
            deliverer.deliver(gt, tokens, envelope, message, size, signal),
          );
          runTransactions(far, {
            serverName,
            maxMessageBytes: graph.maxMessageBytes,
            maxRecipients: graph.maxRecipients,
            lineBytes: deps.limits.line_bytes,
            idleMs: SESSION_IDLE_MS,
            sink,
            log,
          });
          return { socket: near, capabilities, buffered: Buffer.alloc(0) };
        },
      };
    },
  };
}
