import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { AdminServer, type Route } from './server.js';

/**
 * The self-service server on admin.connect_address:connect_port, serving only `routes`
 * (/connect, /connect/start, /oauth/callback) so those can face users while /metrics and
 * /status stay on the admin port. Undefined when connect_port is not set.
 */
export function createConnectServer(
  config: Config,
  routes: Route[],
  deps: { metrics: Metrics; log: Logger },
): AdminServer | undefined {
  const { connect_port: port, connect_address: address } = config.admin;
  if (port === undefined) return undefined;
  return new AdminServer({
    address: address ?? config.admin.address,
    port,
    metrics: deps.metrics,
    log: deps.log,
    readiness: [],
    routes,
    onlyRoutes: true,
  });
}
