#!/bin/bash
# /docker-entrypoint-initdb.d script for the primary (scale overlay), run once on a fresh data
# directory: a replication role and the pg_hba rule that lets replicas stream from data-net.
# Existing deployment? Run the same two statements by hand, then `SELECT pg_reload_conf()`.
set -euo pipefail
: "${POSTGRES_REPLICATION_PASSWORD:?set POSTGRES_REPLICATION_PASSWORD in deploy/.env}"
psql -v ON_ERROR_STOP=1 -v pw="$POSTGRES_REPLICATION_PASSWORD" \
  --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
SQL
echo "host replication replicator 172.22.0.0/24 scram-sha-256" >>"$PGDATA/pg_hba.conf"
