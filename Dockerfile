# syntax=docker/dockerfile:1
# Build: docker build -t imap-oauth-proxy .
# Run:   docker run -v iop-data:/data -v $PWD/config.yaml:/config/config.yaml:ro \
#          -e IMAP_PROXY_CONFIG=/config/config.yaml -e IMAP_PROXY_KEY=… -p 993:1993 -p 9143:9143 imap-oauth-proxy
# test/integration/dockerfile.test.ts runs this file's build and start steps outside Docker.

FROM node:20-bookworm-slim AS build
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# openssl makes the first-start self-signed certificate; tini forwards signals and reaps children.
RUN apt-get update && apt-get install -y --no-install-recommends openssl tini ca-certificates \
  && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    IMAP_PROXY_CONFIG=/app/config/example.yaml \
    IMAP_PROXY_DATA=/data \
    IMAP_PROXY_KEY_FILE=/data/master.key \
    IMAP_PROXY_BIND=0.0.0.0
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config ./config
RUN mkdir -p /data /config && chown node:node /data /config
USER node
VOLUME ["/data", "/config"]
EXPOSE 1143 1993 1587 1465 1110 1995 9143
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.IMAP_PROXY_ADMIN_PORT || 9143) + '/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "node", "dist/cli.js"]
CMD ["serve"]
