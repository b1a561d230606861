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

/**
 * Onboarding pages on the admin server. /connect only when admin.connect_page is true; the
 * start and callback routes also serve `account link` URLs, so they exist whenever
 * admin.public_url is set. /status always exists and refuses without admin.admin_password.
 */
export function onboardingRoutes(deps: OnboardingDeps): Route[] {
  const routes: Route[] = [{ method: 'GET', path: '/status', handler: statusHandler(deps) }];
  if (deps.config.admin.public_url) {
    routes.push(
      { method: 'GET', path: START_PATH, handler: startHandler(deps) },
      { method: 'GET', path: CALLBACK_PATH, handler: callbackHandler(deps) },
    );
  }
  if (deps.config.admin.connect_page)
    routes.push({ method: 'GET', path: '/connect', handler: connectPage(deps) });
  return routes;
}
