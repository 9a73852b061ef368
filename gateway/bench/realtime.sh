#!/usr/bin/env bash
# gateway/bench/realtime.sh [clients] [rate] [seconds] [source] — the realtime benchmark:
# a fresh database, the Python API + relay + audit subscriber and the gateway on the loopback
# servers (scripts/services), N WebSocket clients, and R events/s from `source`:
#   api     document writes through the Python API (end to end: commit → delivered), default
#   broker  events published straight to the realtime exchange (the gateway's fan-out alone)
# Writes $REALTIME_RESULTS_DIR (default gateway/bench/results)/realtime-<source>-<date>.json.
# Needs `npm run build` first.
set -Eeuo pipefail
ulimit -n 65536 2>/dev/null || ulimit -n 4096 || true
cd "$(dirname "$0")/../.."
CLIENTS=${1:-1000} RATE=${2:-200} SECONDS_=${3:-20} SOURCE=${4:-api}
case $SOURCE in api | broker) ;; *) echo "source must be api or broker, not $SOURCE" >&2; exit 2 ;; esac
eval "$(scripts/services env)"
ns="benchrt$RANDOM"; db="bench_rt_$RANDOM"; work=$(mktemp -d)
psql "$CAPSTAN_TEST_DATABASE_URL" -qc "CREATE DATABASE $db"
export CAPSTAN_DATABASE_URL="${CAPSTAN_TEST_DATABASE_URL%/*}/$db" CAPSTAN_CACHE_URL=$CAPSTAN_TEST_REDIS_URL \
  CAPSTAN_BROKER_URL=$CAPSTAN_TEST_AMQP_URL CAPSTAN_BROKER_NAMESPACE=$ns CAPSTAN_DATA_DIR=$work \
  CAPSTAN_RATE_LIMIT_PER_MINUTE=10000000 CAPSTAN_RATE_LIMIT_BURST=1000000 CAPSTAN_LOG_LEVEL=WARNING
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$CAPSTAN_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  # Durable queues outlive the run: leaving them piles up thousands on the shared node.
  .venv/bin/capstan broker remove-namespace "$ns" --yes >/dev/null 2>&1 ||
    echo "could not delete broker namespace $ns (capstan broker remove-namespace $ns)" >&2
}
trap cleanup EXIT
.venv/bin/capstan migrate >/dev/null
read -r tenant key < <(.venv/bin/capstan tenants create bench --json | python3 -c 'import json,sys; t=json.load(sys.stdin); print(t["tenant_id"], t["api_key"])')
api_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
gw_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/capstan api --port "$api_port" >"$work/api.log" 2>&1 & pids+=($!); api_pid=$!
CAPSTAN_METRICS_PORT=0 .venv/bin/capstan relay >"$work/relay.log" 2>&1 & pids+=($!); relay_pid=$!
CAPSTAN_METRICS_PORT=0 .venv/bin/capstan subscriber audit >"$work/sub.log" 2>&1 & pids+=($!); audit_pid=$!
# GATEWAY_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", to profile the gateway.
# shellcheck disable=SC2086
CAPSTAN_GATEWAY_PORT=$gw_port node ${GATEWAY_NODE_ARGS:-} gateway/dist/server.js >"$work/gateway.log" 2>&1 & pids+=($!); gw_pid=$!
for _ in $(seq 100); do
  curl -sf "localhost:$gw_port/readyz" >/dev/null && curl -sf "localhost:$api_port/healthz" >/dev/null && break
  sleep 0.2
done
export BENCH_GIT="$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo -dirty)"
results=${REALTIME_RESULTS_DIR:-gateway/bench/results}
mkdir -p "$results"
out="$results/realtime-$SOURCE-$(date -u +%Y%m%dT%H%M%SZ).json"
if [ "$SOURCE" = api ]; then source_args=(--api "http://127.0.0.1:$api_port")
else source_args=(--amqp "$CAPSTAN_BROKER_URL" --namespace "$ns" --tenant "$tenant"); fi
node ${BENCH_NODE_ARGS:-} gateway/dist/bench/realtime.js --gateway "http://127.0.0.1:$gw_port" "${source_args[@]}" \
  --key "$key" --clients "$CLIENTS" --rate "$RATE" --seconds "$SECONDS_" --warmup "${WARMUP_SECONDS:-3}" --out "$out" \
  --pids "api=$api_pid,relay=$relay_pid,audit=$audit_pid,gateway=$gw_pid,rabbitmq=$(pgrep -o beam.smp || true),postgres=comm:postgres"
echo "results: $out (logs in $work)"
