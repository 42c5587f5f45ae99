#!/usr/bin/env bash
# Starts or stops a throwaway redis-server on loopback for the tests (no persistence).
#   eval "$(scripts/redis.sh start)"   # starts it and exports ORCS_TEST_REDIS_URL
#   scripts/redis.sh stop              # stops it by its pid file
# ORCS_REDIS_PORT picks the port (default 6390). Installs redis-server with apt if it is missing.
# Without ORCS_TEST_REDIS_URL the tests start their own server anyway; this is for sharing one
# server across runs or inspecting it with redis-cli.
set -euo pipefail

port="${ORCS_REDIS_PORT:-6390}"
dir="${TMPDIR:-/tmp}/orcs-redis-$port"
pidfile="$dir/redis.pid"

case "${1:-start}" in
  start)
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "redis.sh: installing redis-server with apt" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    mkdir -p "$dir"
    if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --dir "$dir" --pidfile "$pidfile" --logfile "$dir/redis.log" >/dev/null
      for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
      redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "redis.sh: redis-server did not start; see $dir/redis.log" >&2; exit 1; }
    fi
    echo "export ORCS_TEST_REDIS_URL=redis://127.0.0.1:$port"
    ;;
  stop)
    if [ -f "$pidfile" ]; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    fi
    ;;
  *)
    echo "usage: scripts/redis.sh start|stop" >&2
    exit 2
    ;;
esac
