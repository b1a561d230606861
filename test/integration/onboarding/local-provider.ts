import { generateKeyLine } from '../../../src/store/crypto.js';

/**
 * Config YAML for a provider whose endpoints are never reached (port 9): enough for /connect to
 * list it and /connect/start to redirect to its authorization endpoint.
 */
export const UNREACHABLE_PROVIDER_YAML = `providers:
  local:
    preset: generic
    authorization_endpoint: http://127.0.0.1:9/auth
    token_endpoint: http://127.0.0.1:9/token
    client_id: proxy
    client_auth: none
    allow_insecure_http: true
    upstream: { host: 127.0.0.1, port: 9 }
`;

/** A whole config for the proxy as `serve` starts it: data in `dir`, one cleartext listener, `admin` as given. */
export function unreachableProviderConfig(dir: string, admin: string): string {
  return `
data_dir: ${JSON.stringify(dir)}
encryption: { key: "${generateKeyLine('k1')}" }
listeners:
  - { name: plain, address: 127.0.0.1, port: 0, tls: none, allow_cleartext_login: true, allow_from: [127.0.0.1/32] }
admin: ${admin}
${UNREACHABLE_PROVIDER_YAML}`;
}
