import {
  type DeviceAuthorizationResponse,
  genericGrantRequest,
  initiateDeviceAuthorization,
  ResponseBodyError,
  type TokenEndpointResponse,
  type TokenEndpointResponseHelpers,
} from 'openid-client';
import type { OAuthProvider } from '../provider.js';

export const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
/** RFC 8628 §3.5: +5 s on slow_down; 5 s when the server names no interval. */
const SLOW_DOWN_STEP_S = 5;
const DEFAULT_INTERVAL_S = 5;

export type DeviceProgress =
  | { type: 'pending'; attempt: number; intervalS: number; remainingS: number }
  | { type: 'slow_down'; intervalS: number };

export interface DeviceFlowOptions {
  scope: string;
  onPrompt: (p: DeviceAuthorizationResponse) => void | Promise<void>;
  onProgress?: (p: DeviceProgress) => void;
  signal?: AbortSignal;
  /** Injected in tests to go faster than the clock. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  now?: () => number;
}

export class DeviceFlowError extends Error {
  override readonly name = 'DeviceFlowError';
  constructor(
    readonly code: 'access_denied' | 'expired_token' | 'aborted' | 'unsupported',
    message: string,
  ) {
    super(message);
  }
}

const defaultSleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        reject(new DeviceFlowError('aborted', 'device authorization aborted'));
      },
      { once: true },
    );
  });

/**
 * RFC 8628 device authorization: shows the prompt, then polls the token endpoint through
 * openid-client, waiting `interval` between polls and 5 s longer after each slow_down.
 */
export async function runDeviceFlow(
  provider: OAuthProvider,
  opts: DeviceFlowOptions,
): Promise<TokenEndpointResponse & TokenEndpointResponseHelpers> {
  const config = await provider.configuration();
  if (!config.serverMetadata().device_authorization_endpoint) {
    throw new DeviceFlowError(
      'unsupported',
      `provider ${provider.name} has no device_authorization_endpoint (set it in the config)`,
    );
  }
  const sleep = opts.sleep ?? defaultSleep;
  const now = opts.now ?? Date.now;
  const da = await initiateDeviceAuthorization(config, { scope: opts.scope });
  await opts.onPrompt(da);
  const deadline = now() + da.expires_in * 1000;
  let interval = da.interval ?? DEFAULT_INTERVAL_S;
  for (let attempt = 1; ; attempt++) {
    if (opts.signal?.aborted) throw new DeviceFlowError('aborted', 'device authorization aborted');
    await sleep(interval * 1000, opts.signal);
    if (now() >= deadline)
      throw new DeviceFlowError('expired_token', 'the code expired before sign-in finished');
    try {
      return await genericGrantRequest(config, DEVICE_CODE_GRANT, { device_code: da.device_code });
    } catch (err) {
      if (!(err instanceof ResponseBodyError)) throw err;
      switch (err.error) {
        case 'authorization_pending':
          opts.onProgress?.({
            type: 'pending',
            attempt,
            intervalS: interval,
            remainingS: Math.max(0, Math.round((deadline - now()) / 1000)),
          });
          break;
        case 'slow_down':
          interval += SLOW_DOWN_STEP_S;
          opts.onProgress?.({ type: 'slow_down', intervalS: interval });
          break;
        case 'access_denied':
          throw new DeviceFlowError('access_denied', 'the user declined the request');
        case 'expired_token':
          throw new DeviceFlowError('expired_token', 'the code expired before sign-in finished');
        default:
          throw err;
      }
    }
  }
}
