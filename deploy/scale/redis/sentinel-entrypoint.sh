#!/bin/sh
# Redis Sentinel (scale overlay). Sentinel rewrites its config file as the topology changes,
# so the file lives in the sentinel's own volume (/data) and is written only the first time:
# after a failover a restarted sentinel must keep following the new master.
set -eu
conf=/data/sentinel.conf
if [ ! -s "$conf" ]; then
  cat >"$conf" <<CONF
port 26379
dir /data
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip ${SENTINEL_ANNOUNCE_HOST}
sentinel monitor capstan redis 6379 2
sentinel auth-pass capstan ${REDIS_PASSWORD}
sentinel down-after-milliseconds capstan 5000
sentinel failover-timeout capstan 60000
sentinel parallel-syncs capstan 1
CONF
fi
chown -R redis:redis /data
chmod 600 "$conf"
exec gosu redis redis-server "$conf" --sentinel
