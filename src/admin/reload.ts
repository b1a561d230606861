import type { Config } from '../config/schema.js';
import type { AdminAuthLimiter } from './auth-limiter.js';
import { adminAuthorized } from './onboarding/status.js';
import { type Route, send } from './server.js';

/**
 * POST /reload (basic auth as `admin` with admin.admin_password, refused when unset): the same
 * reload as SIGHUP, answered with its outcome as JSON (`imap-oauth-proxy reload` calls it).
 */
export function reloadRoute(deps: {
  config: Config;
  authLimiter?: AdminAuthLimiter | undefined;
  reload: () => Promise<{ result: string; problems: readonly string[]; restartNeeded: readonly string[] }>;
}): Route {
  return {
    method: 'POST',
    path: '/reload',
    handler: async (req, res) => {
      if (!adminAuthorized(req, res, deps.config.admin.admin_password, deps.authLimiter)) return;
      const outcome = await deps.reload();
      send(res, outcome.result === 'success' ? 200 : 409, `${JSON.stringify(outcome)}\n`, 'application/json');
    },
  };
}
