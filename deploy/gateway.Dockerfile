# syntax=docker/dockerfile:1
# The Node.js realtime gateway (:3001): WebSocket + SSE, document reads, /healthz, /metrics.
# Build from the repository root:  docker build -f deploy/gateway.Dockerfile -t capstan-gateway .
# Expects gateway/package.json + gateway/package-lock.json, `npm run build` writing dist/
# (with dist/lua copied from src/capstan/cache/lua), and dist/server.js as the entry point.

ARG NODE_IMAGE=node:20-bookworm-slim

# ---------------------------------------------------------------- build (with dev deps)
# The repository's layout under /repo: `npm run build` copies the cache contract's Lua scripts
# from ../src/capstan/cache/lua (their only copy, the Python package's data) into dist/lua.
FROM ${NODE_IMAGE} AS build
WORKDIR /repo/gateway
COPY gateway/package.json gateway/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY gateway/ ./
COPY src/capstan/cache/lua /repo/src/capstan/cache/lua
RUN npm run build

# ---------------------------------------------------------------- production node_modules
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY gateway/package.json gateway/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# ---------------------------------------------------------------- runtime
FROM ${NODE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="capstan-gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
    CAPSTAN_GATEWAY_HOST=0.0.0.0 \
    CAPSTAN_GATEWAY_PORT=3001
WORKDIR /app
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /repo/gateway/dist ./dist
COPY --chown=root:root gateway/package.json ./
# The image's built-in unprivileged `node` user (uid 1000); the code stays root-owned.
USER 1000:1000
EXPOSE 3001
# Node 20 has fetch built in; the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=10s --retries=3 --start-period=5s \
    CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.CAPSTAN_GATEWAY_PORT||3001)+'/healthz',{signal:AbortSignal.timeout(8000)}).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/server.js"]

# ---------------------------------------------------------------- dev
# docker-compose.dev.yml bind-mounts gateway/ at /app, src/capstan/cache/lua at
# /src/capstan/cache/lua (read-only, for the build's copy into dist/lua) and the nodejs_modules
# volume at /app/node_modules; `npm ci` runs when the lock file changed, then `npm run dev`.
FROM ${NODE_IMAGE} AS dev
ENV NODE_ENV=development \
    CAPSTAN_GATEWAY_HOST=0.0.0.0 \
    CAPSTAN_GATEWAY_PORT=3001
RUN install -d -o node -g node /app /app/node_modules
COPY --chmod=0755 deploy/dev/gateway-entrypoint.sh /usr/local/bin/gateway-dev
USER 1000:1000
WORKDIR /app
EXPOSE 3001
ENTRYPOINT ["gateway-dev"]
