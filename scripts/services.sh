#!/usr/bin/env bash
# Makes sure the services the tests need are up: Redis on 127.0.0.1:6379 and PostgreSQL on
# 127.0.0.1:5432 (database `test`, user `postgres`). Starts what is not running; installs
# redis-server with apt only if it is missing entirely. Idempotent.
set -euo pipefail

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "services: redis-server is missing; installing it with apt" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! redis_up; then
  echo "services: starting Redis on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "services: Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }
fi

if ! pg_up; then
  if [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 100); do pg_up && break; sleep 0.1; done
  fi
  pg_up || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432; start it (see README.md)" >&2; exit 1; }
fi
echo "services: Redis and PostgreSQL are up" >&2
