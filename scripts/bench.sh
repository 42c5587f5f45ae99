#!/usr/bin/env bash
# Runs the SPEC section 7 workload on orcs (Redis, memory, SQLite, PostgreSQL) and on the peers
# (BullMQ, apalis) in interleaved rounds against one throwaway Redis, then prints a markdown table
# of medians, min-max and ratios to BullMQ.
#
#   scripts/bench.sh                 ROUNDS=3 N=50000 BACKLOG=1000000 PORT=6390
#   env: PEERS=../shared/peers  SKIP_PEERS=1  SKIP_APALIS=1  DRIVERS="redis memory sqlite postgres"
#        APALIS_TARGET=dir  (keep the apalis harness' build between runs; default: the temp folder)
#        SKIP_SCHEDULE=1  SCHEDULE_SECS=30  SKIP_OPS=1  OPS_N=200000
#
# orcs runs drain-batch (the N jobs as one batch's children) next to drain in every round, and
# schedule-latency (10 schedules every second for SCHEDULE_SECS: slot to job start) in the
# first round only, since it takes its time in full whatever the machine. Every round also runs
# the operations phases (issue #13) in a run of their own: ops-latency (`/metrics` and the
# overview page with BACKLOG jobs queued; Redis only, as the backlog phase) and ops-cost (OPS_N
# jobs drained without and with heartbeats and metrics, alternating).
#
# Everything it starts (redis-server) it stops by pid; peers are installed and built in a
# temporary folder; each command is bounded with `timeout`. Results land in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ROUNDS=${ROUNDS:-3}
N=${N:-50000}
BACKLOG=${BACKLOG:-1000000}
PORT=${PORT:-6390}
PEERS=${PEERS:-$root/../shared/peers}
DRIVERS=${DRIVERS:-redis memory sqlite postgres}
# PostgreSQL runs in a schema of its own, created if missing.
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dorcs_bench}
out=$root/target/bench
work=$(mktemp -d /tmp/orcs-bench.XXXXXX)
mkdir -p "$out"
rm -f "$out"/*.jsonl

redis_pid=""
cleanup() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

echo "# bench: starting a throwaway redis-server on 127.0.0.1:$PORT" >&2
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$work/redis.pid" --dir "$work" >/dev/null
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_pid=$(cat "$work/redis.pid")

echo "# bench: building orcs (release)" >&2
cargo build --release -q -p orcs-cli
orcs=${CARGO_TARGET_DIR:-$root/target}/release/orcs
case " $DRIVERS " in
  # A fresh schema per run: dead rows left by an earlier run would slow this one down.
  *" postgres "*) case $PG_URL in
      *orcs_bench*) psql -q "${PG_URL%%\?*}" -c 'DROP SCHEMA IF EXISTS orcs_bench CASCADE' \
          -c 'CREATE SCHEMA orcs_bench' >/dev/null 2>&1 ;;
    esac ;;
esac

have_peers=0
apalis_target=${APALIS_TARGET:-$work/apalis/target}
if [ -z "${SKIP_PEERS:-}" ] && [ -d "$PEERS/bullmq" ]; then
  echo "# bench: installing BullMQ and building apalis in $work" >&2
  cp -r "$PEERS/bullmq" "$work/bullmq"
  (cd "$work/bullmq" && timeout 600 npm ci --silent --no-audit --no-fund >/dev/null 2>&1)
  if [ -z "${SKIP_APALIS:-}" ]; then
    cp -r "$PEERS/apalis" "$work/apalis"
    (cd "$work/apalis" && CARGO_TARGET_DIR=$apalis_target timeout 1200 cargo build --release -q 2>/dev/null) \
      || echo "# bench: apalis did not build; skipping it" >&2
  fi
  have_peers=1
fi

# Redis memory per queued job: fill N jobs, read used_memory, flush.
memory_line() { # label command...
  local label=$1 before after
  shift
  cli flushdb >/dev/null
  before=$(cli info memory | awk -F: '/^used_memory:/{print $2+0}')
  "$@" >/dev/null
  after=$(cli info memory | awk -F: '/^used_memory:/{print $2+0}')
  cli flushdb >/dev/null
  python3 -c "import json,sys; print(json.dumps({'impl': sys.argv[1], 'bytes_per_job': round(($after - $before) / $N, 1)}))" "$label"
}

redis_url="redis://127.0.0.1:$PORT/0"
for round in $(seq "$ROUNDS"); do
  echo "# bench: round $round of $ROUNDS" >&2
  for driver in $DRIVERS; do
    case $driver in
      redis) args=(--driver redis --url "$redis_url") ;;
      memory) args=(--driver memory) ;;
      sqlite) args=(--driver database --url "sqlite://$work/bench-$round.db") ;;
      postgres) args=(--driver database --url "$PG_URL") ;;
    esac
    phases=single,single-unique,bulk,drain,drain-batch,drain-limited,latency
    [ "$driver" = redis ] && phases=$phases,backlog
    [ "$round" = 1 ] && [ -z "${SKIP_SCHEDULE:-}" ] && phases=$phases,schedule-latency
    cli flushdb >/dev/null
    timeout 1200 "$orcs" "${args[@]}" bench --n "$N" --backlog "$BACKLOG" --phases "$phases" \
      --schedule-secs "${SCHEDULE_SECS:-30}" \
      >>"$out/orcs-$driver.jsonl" || echo "# bench: orcs on $driver failed" >&2
    if [ -z "${SKIP_OPS:-}" ]; then
      ops=ops-cost
      [ "$driver" = redis ] && ops=ops-latency,ops-cost
      cli flushdb >/dev/null
      timeout 1800 "$orcs" "${args[@]}" bench --n "${OPS_N:-200000}" --backlog "$BACKLOG" \
        --phases "$ops" >>"$out/orcs-$driver-ops.jsonl" || echo "# bench: orcs ops on $driver failed" >&2
    fi
  done
  memory_line orcs "$orcs" --driver redis --url "$redis_url" bench --n "$N" --phases fill >>"$out/orcs-redis-memory.jsonl"
  if [ "$have_peers" = 1 ]; then
    cli flushdb >/dev/null
    (cd "$work/bullmq" && REDIS_PORT=$PORT timeout 1200 node bench.mjs "$N") >>"$out/bullmq.jsonl" \
      || echo "# bench: BullMQ failed" >&2
    memory_line bullmq node "$root/scripts/bench/bullmq-fill.mjs" "$work/bullmq" "$PORT" "$N" >>"$out/bullmq-memory.jsonl"
    if [ -x "$apalis_target/release/bench-apalis" ]; then
      cli flushdb >/dev/null
      REDIS_URL="$redis_url" timeout 1200 "$apalis_target/release/bench-apalis" "$N" >>"$out/apalis.jsonl" \
        || echo "# bench: apalis failed" >&2
    fi
  fi
done

cat "$out/orcs-redis-memory.jsonl" >>"$out/orcs-redis.jsonl"
[ -f "$out/bullmq-memory.jsonl" ] && cat "$out/bullmq-memory.jsonl" >>"$out/bullmq.jsonl"

echo
echo "Redis (N = $N, backlog $BACKLOG, $ROUNDS rounds, $(nproc) cores, $(redis-server --version | cut -d' ' -f3)):"
echo
columns=()
[ -f "$out/bullmq.jsonl" ] && columns+=("BullMQ=$out/bullmq.jsonl")
columns+=("orcs redis=$out/orcs-redis.jsonl")
[ -f "$out/apalis.jsonl" ] && columns+=("apalis=$out/apalis.jsonl")
python3 scripts/bench/summarize.py "${columns[@]}"
echo
echo "orcs on every driver:"
echo
columns=()
for driver in $DRIVERS; do columns+=("orcs $driver=$out/orcs-$driver.jsonl"); done
python3 scripts/bench/summarize.py "${columns[@]}"
if [ -z "${SKIP_OPS:-}" ]; then
  echo
  echo "orcs operations (issue #13; load average $(cut -d' ' -f1-3 /proc/loadavg)):"
  echo
  columns=()
  for driver in $DRIVERS; do columns+=("orcs $driver=$out/orcs-$driver-ops.jsonl"); done
  python3 scripts/bench/summarize.py "${columns[@]}"
fi
