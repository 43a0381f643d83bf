#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379, starting one if needed.
set -euo pipefail

answers() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if answers; then
  exit 0
fi
echo "Starting redis-server on 127.0.0.1:6379"
mkdir -p /tmp/heartbeat-app-redis
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir /tmp/heartbeat-app-redis --logfile /tmp/heartbeat-app-redis/redis.log
for _ in $(seq 1 50); do
  answers && exit 0
  sleep 0.1
done
echo "redis-server did not answer on 127.0.0.1:6379" >&2
exit 1
