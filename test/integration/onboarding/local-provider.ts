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
