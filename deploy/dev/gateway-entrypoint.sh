#!/bin/sh
# Development entrypoint for the gateway (docker-compose.dev.yml): `npm ci` into the
# nodejs_modules volume when package-lock.json changed, then `npm run dev` (or the arguments).
set -eu
cd /app
stamp=/app/node_modules/.capstan-installed
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "gateway-dev: npm ci into /app/node_modules" >&2
  npm ci --no-audit --no-fund
  echo "$want" >"$stamp"
fi
if [ "$#" -gt 0 ]; then exec "$@"; fi
exec npm run dev
