#!/bin/bash
# Entrypoint of a PostgreSQL read replica (scale overlay). On an empty data directory it
# clones the primary with pg_basebackup (streaming WAL, a physical replication slot named
# $REPLICA_SLOT, and -R so it starts as a hot standby following the primary), then hands over
# to the image's own entrypoint.
set -euo pipefail
: "${PGDATA:=/var/lib/postgresql/data}"
: "${REPLICA_SLOT:?}"
: "${POSTGRES_REPLICATION_PASSWORD:?set POSTGRES_REPLICATION_PASSWORD in deploy/.env}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 0700 "$PGDATA"
  until pg_isready -q -h postgres -p 5432; do
    echo "replica: waiting for the primary" >&2
    sleep 2
  done
  echo "replica: cloning the primary into $PGDATA (slot $REPLICA_SLOT)" >&2
  # A slot left behind by a wiped replica is reused rather than recreated.
  if PGPASSWORD="$POSTGRES_REPLICATION_PASSWORD" psql -h postgres -U replicator -d postgres -Atqc \
    "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$REPLICA_SLOT'" 2>/dev/null | grep -q 1; then
    create=()
  else
    create=(-C)
  fi
  PGPASSWORD="$POSTGRES_REPLICATION_PASSWORD" gosu postgres pg_basebackup \
    -h postgres -p 5432 -U replicator -D "$PGDATA" -R -X stream "${create[@]}" -S "$REPLICA_SLOT"
fi
exec docker-entrypoint.sh "$@"
