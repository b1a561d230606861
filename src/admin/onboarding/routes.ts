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
 * Onboarding pages on the admin server. Flags are read per request: /connect answers only
 * while admin.connect_page is true; start and callback (also used by `account link` URLs)
 * need admin.public_url; /status refuses without admin.admin_password.
 */
export function onboardingRoutes(deps: OnboardingDeps): Route[] {
  return [
    { method: 'GET', path: '/status', handler: statusHandler(deps) },
    { method: 'GET', path: START_PATH, handler: startHandler(deps) },
    { method: 'GET', path: CALLBACK_PATH, handler: callbackHandler(deps) },
    { method: 'GET', path: '/connect', handler: connectPage(deps) },
  ];
}
