#!/usr/bin/env bash
# Starts or stops a 3-master Redis Cluster on loopback from the local redis-server (no replicas,
# no persistence), for the Redis driver's cluster tests.
#   eval "$(scripts/redis-cluster.sh start)"   # exports ORCS_TEST_REDIS_CLUSTER_URL
#   scripts/redis-cluster.sh stop              # stops the three servers by their pid files
# ORCS_REDIS_CLUSTER_PORT is the first port (default 7100; uses it and the next two, plus their
# cluster bus ports 10000 higher). Without ORCS_TEST_REDIS_CLUSTER_URL the tests start a cluster
# of their own on free ports anyway.
set -euo pipefail

base="${ORCS_REDIS_CLUSTER_PORT:-7100}"
ports=("$base" "$((base + 1))" "$((base + 2))")
dir="${TMPDIR:-/tmp}/orcs-redis-cluster-$base"

up() { redis-cli -p "$1" ping >/dev/null 2>&1; }

case "${1:-start}" in
  start)
    if ! command -v redis-server >/dev/null 2>&1; then
      echo "redis-cluster.sh: installing redis-server with apt" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    mkdir -p "$dir"
    for port in "${ports[@]}"; do
      if ! up "$port"; then
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
          --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
          --dir "$dir" --pidfile "$dir/redis-$port.pid" --logfile "$dir/redis-$port.log" >/dev/null
      fi
    done
    for port in "${ports[@]}"; do
      for _ in $(seq 50); do up "$port" && break; sleep 0.1; done
      up "$port" || { echo "redis-cluster.sh: node $port did not start; see $dir" >&2; exit 1; }
    done
    if ! redis-cli -p "$base" cluster info | grep -q cluster_state:ok; then
      redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
      for _ in $(seq 100); do
        ok=1
        for port in "${ports[@]}"; do
          redis-cli -p "$port" cluster info | grep -q cluster_state:ok || ok=0
        done
        [ "$ok" = 1 ] && break
        sleep 0.1
      done
      [ "$ok" = 1 ] || { echo "redis-cluster.sh: the cluster did not become ready" >&2; exit 1; }
    fi
    nodes="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
    echo "export ORCS_TEST_REDIS_CLUSTER_URL=redis+cluster://$nodes"
    ;;
  stop)
    for port in "${ports[@]}"; do
      pidfile="$dir/redis-$port.pid"
      if [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
      fi
    done
    rm -rf "$dir"
    ;;
  *)
    echo "usage: scripts/redis-cluster.sh start|stop" >&2
    exit 2
    ;;
esac
