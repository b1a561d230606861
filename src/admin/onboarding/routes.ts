import { AdminAuthLimiter } from '../auth-limiter.js';
import type { Route } from '../server.js';
import {
  CALLBACK_PATH,
  callbackHandler,
  connectPage,
  type OnboardingDeps,
  START_PATH,
  startHandler,
} from './connect.js';
import { statusHandler } from './status.js';

/** The self-service paths, which admin.connect_port moves to a server of their own. */
export const CONNECT_PATHS: readonly string[] = ['/connect', START_PATH, CALLBACK_PATH];

/**
 * Onboarding pages on the admin server. Flags are read per request: /connect answers only
 * while admin.connect_page is true; start and callback (also used by `account link` URLs)
 * need admin.public_url; /status refuses without admin.admin_password.
 */
export function onboardingRoutes(deps: OnboardingDeps): Route[] {
  const authLimiter = deps.authLimiter ?? AdminAuthLimiter.fromConfig(deps.config.limiter);
  return [
    { method: 'GET', path: '/status', handler: statusHandler({ ...deps, authLimiter }) },
    { method: 'GET', path: START_PATH, handler: startHandler(deps) },
    { method: 'GET', path: CALLBACK_PATH, handler: callbackHandler(deps) },
    { method: 'GET', path: '/connect', handler: connectPage(deps) },
  ];
}

/**
 * Which server serves which route: with `separate` (admin.connect_port set) the self-service
 * paths go to the connect server only and everything else stays on the admin server.
 */
export function splitConnectRoutes(routes: Route[], separate: boolean): { admin: Route[]; connect: Route[] } {
  if (!separate) return { admin: routes, connect: [] };
  const isConnect = (r: Route) => CONNECT_PATHS.includes(r.path);
  return { admin: routes.filter((r) => !isConnect(r)), connect: routes.filter(isConnect) };
}
