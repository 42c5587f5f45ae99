#!/usr/bin/env bash
# Runs the SPEC section 7 workload on orcs (Redis, memory, SQLite, PostgreSQL) and on the peers
# in interleaved rounds: BullMQ and apalis against one throwaway Redis, and the database driver's
# peers (graphile_worker, apalis-postgres, pgqueuer on PostgreSQL; apalis-sqlite on SQLite).
# Then it prints markdown tables of medians, min-max and ratios: Redis (to BullMQ), PostgreSQL
# and SQLite (orcs against the best peer of each metric), and orcs on every driver.
#
#   scripts/bench.sh                 ROUNDS=3 N=50000 BACKLOG=1000000 PORT=6390
#   env: PEERS=../shared/peers  DRIVERS="redis memory sqlite postgres"
#        SKIP_PEERS=1 (BullMQ and apalis on Redis)  SKIP_APALIS=1
#        APALIS_TARGET=dir  (keep the apalis harness' build between runs; default: the temp folder)
#        SKIP_SQL_PEERS=1  SQL_N=20000  SQL_PEERS_CACHE=dir  (sources, builds and the pgqueuer venv of
#        the SQL peers, kept between runs; default: the temp folder)
#        PG_SERVER=postgres://postgres@127.0.0.1:5432  (with a database `test` to connect to)
#        SKIP_SCHEDULE=1  SCHEDULE_SECS=30  SKIP_OPS=1  OPS_N=200000
#        ORCS=binary  (an orcs built before; default: build this tree's in release)
#        OUT=dir  (the raw JSON lines; default target/bench, whose previous run moves to
#        target/bench/previous instead of being deleted)
#
# orcs runs drain-batch (the N jobs as one batch's children) and drain-features (plain drains
# against drains with unique keys, a non-binding concurrency limit, heartbeats and metrics, in
# alternating rounds) next to drain in every round, and schedule-latency (10 schedules every
# second for SCHEDULE_SECS: slot to job start) in the first round only, since it takes its time
# in full whatever the machine. Every round also runs the operations phases (issue #13) in a run
# of their own: ops-latency (`/metrics` and the overview page with BACKLOG jobs queued, on every
# driver but memory; queueing 1,000,000 jobs took 14 to 28 s on PostgreSQL and 8 s on SQLite on
# the 2-core development machine, the 600 timed requests under a second) and ops-cost (OPS_N
# jobs drained without and with heartbeats and metrics, alternating).
#
# On PostgreSQL orcs runs each phase in a process of its own, which vacuums the database first
# (`orcs bench` does, as autovacuum would have kept the table; the development server runs with
# it off), and the phases' lines are merged into one per round; so does its run beside each SQL
# peer, whose harness empties its tables with `TRUNCATE` before every phase.
#
# The SQL peers run in each round after orcs's drivers, each followed by orcs on the same backend
# with the peers' phases (single, bulk, drain, latency), so that the machine's noise falls on
# both. Every peer makes its own database (bench_gw_<pid>, bench_apalis_<pid>, bench_pgq_<pid>)
# or file and drops it; orcs gets a database or file of its own per run too (orcs_bench_<pid>_*).
#
# Everything it starts (redis-server) it stops by pid; peers are installed and built in a
# temporary folder or the cache folders above; each command is bounded with `timeout`. Results
# land in target/bench/ (the SQL peers' and their orcs runs' stderr in sql-peers.log there).
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
PG_SERVER=${PG_SERVER:-postgres://postgres@127.0.0.1:5432}
# The SQL peers' N: 20,000, as every recorded run used. At 50,000 they take minutes a phase
# (graphile_worker's one-by-one enqueue 67 s), and a full run with the defaults was still in its
# first round after half an hour (BENCHMARKS.md round 15).
SQL_N=${SQL_N:-20000}
out=${OUT:-$root/target/bench}
work=$(mktemp -d /tmp/orcs-bench.XXXXXX)
mkdir -p "$out"
# The last run's raw lines move aside (one run back) rather than being lost to this one.
if compgen -G "$out/*.jsonl" >/dev/null; then
  rm -rf "$out/previous" && mkdir -p "$out/previous"
  mv "$out"/*.jsonl "$out/previous/"
  if [ -f "$out/sql-peers.log" ]; then mv "$out/sql-peers.log" "$out/previous/"; fi
fi

redis_pid=""
orcs_db=""
pg_schema=""
cleanup() {
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
    # Gone before returning, so a run right after finds the port free.
    for _ in $(seq 50); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -n "$pg_schema" ]; then
    psql -q "${PG_URL%%\?*}" -c "DROP SCHEMA IF EXISTS $pg_schema CASCADE" >/dev/null 2>&1 || true
  fi
  if [ -n "$orcs_db" ]; then
    psql -q "$PG_SERVER/test" -c "DROP DATABASE IF EXISTS $orcs_db WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

has_driver() { case " $DRIVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

cli() { redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }

# A server already on the port (another run's, still stopping, or someone else's) would be
# benchmarked and flushed in place of ours: wait a little for it to go, else stop.
for _ in $(seq 50); do cli ping >/dev/null 2>&1 || break; sleep 0.1; done
if cli ping >/dev/null 2>&1; then
  echo "bench: something already answers on 127.0.0.1:$PORT; stop it or pick a free port with PORT=" >&2
  exit 1
fi
echo "# bench: starting a throwaway redis-server on 127.0.0.1:$PORT" >&2
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$work/redis.pid" --dir "$work" >/dev/null
for _ in $(seq 50); do [ -s "$work/redis.pid" ] && cli ping >/dev/null 2>&1 && break; sleep 0.1; done
if [ ! -s "$work/redis.pid" ]; then
  echo "bench: redis-server did not start on 127.0.0.1:$PORT; pick a free port with PORT=" >&2
  exit 1
fi
redis_pid=$(cat "$work/redis.pid")

if [ -n "${ORCS:-}" ]; then
  orcs=$ORCS
else
  echo "# bench: building orcs (release)" >&2
  cargo build --release -q -p orcs-cli
  orcs=${CARGO_TARGET_DIR:-$root/target}/release/orcs
fi
# A fresh schema per run: dead rows left by an earlier run would slow this one down.
# Only a schema named orcs_bench* in PG_URL's search_path is dropped and made anew.
fresh_pg_schema() {
  case $PG_URL in
    *search_path%3Dorcs_bench*)
      pg_schema=${PG_URL##*search_path%3D}
      pg_schema=${pg_schema%%&*}
      psql -q "${PG_URL%%\?*}" -c "DROP SCHEMA IF EXISTS $pg_schema CASCADE" \
        -c "CREATE SCHEMA $pg_schema" >/dev/null 2>&1 ;;
  esac
}

# orcs on PostgreSQL, one process per phase; the phases' lines are merged into one on stdout.
# `orcs bench` itself runs `VACUUM (ANALYZE)` before every phase and round on PostgreSQL (its
# `Tidy`): with autovacuum off (as on the development server) the dead rows of the phases before
# slowed each later one down (in round 16's order a drain ran at a third of its rate on a fresh
# database, latency p50 67 ms); in production autovacuum keeps up, and the SQL peers' harnesses
# start every phase on a clean table (`TRUNCATE`).
#   pg_phases PHASES orcs-arguments... (each run gets `--phases <one phase>` appended)
pg_phases() {
  local phases=$1 phase lines
  shift
  lines=$(mktemp "$work/pg-phases.XXXXXX")
  for phase in ${phases//,/ }; do
    timeout 1200 "$orcs" "$@" --phases "$phase" >>"$lines" \
      || echo "# bench: orcs on postgres failed ($phase)" >&2
  done
  # The batch drain's ratio to the plain drain, which one process computes when it runs both.
  python3 -c 'import json, sys
merged = {}
for line in sys.stdin:
    if line.strip():
        merged.update(json.loads(line))
plain, batch = merged.get("drain_jps"), merged.get("drain_batch_jps")
if plain and batch:
    merged["drain_batch_vs_drain"] = round(batch / plain, 3)
if merged:
    print(json.dumps(merged))' <"$lines"
  rm -f "$lines"
}

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

# The database driver's peers: sources copied with their times kept (so that a kept build stays
# fresh), built and installed under SQL_PEERS_CACHE; a peer that does not build is left out.
sql_cache=${SQL_PEERS_CACHE:-$work/sql-peers}
sql_limit=${SQL_TIMEOUT:-900} # seconds per run; every harness also bounds each phase itself
gw_bin=""
apalis_sql_bin=""
pgq_py=""
sql_peer_src() { rm -rf "${sql_cache:?}/src/$1" && cp -a "$PEERS/$1" "$sql_cache/src/$1"; }
build_sql_peer() { # dir target-dir binary
  sql_peer_src "$1" || return
  (cd "$sql_cache/src/$1" && CARGO_TARGET_DIR=$sql_cache/$2 timeout 2400 cargo build --release --locked -q) \
    >>"$out/sql-peers.log" 2>&1 && [ -x "$sql_cache/$2/release/$3" ]
}
if [ -z "${SKIP_SQL_PEERS:-}" ] && { has_driver postgres || has_driver sqlite; } \
  && [ -d "$PEERS/apalis-sql" ]; then
  echo "# bench: building the SQL peers in $sql_cache" >&2
  mkdir -p "$sql_cache/src"
  if build_sql_peer apalis-sql target-apalis-sql bench-apalis-sql; then
    apalis_sql_bin=$sql_cache/target-apalis-sql/release/bench-apalis-sql
  else
    echo "# bench: apalis-sql did not build (see $out/sql-peers.log); skipping it" >&2
  fi
  if has_driver postgres; then
    if build_sql_peer graphile-worker-rs target-graphile bench-graphile-worker; then
      gw_bin=$sql_cache/target-graphile/release/bench-graphile-worker
    else
      echo "# bench: graphile_worker did not build (see $out/sql-peers.log); skipping it" >&2
    fi
    # The venv is kept while the pinned requirements are the same.
    venv=$sql_cache/venv-pgqueuer
    if sql_peer_src pgqueuer && ! cmp -s "$PEERS/pgqueuer/requirements.txt" "$venv/requirements.txt"; then
      rm -rf "$venv"
      { python3 -m venv "$venv" \
        && timeout 900 "$venv/bin/pip" install -q -r "$PEERS/pgqueuer/requirements.txt" \
        && cp "$PEERS/pgqueuer/requirements.txt" "$venv/requirements.txt"; } >>"$out/sql-peers.log" 2>&1 \
        || echo "# bench: pgqueuer did not install (see $out/sql-peers.log); skipping it" >&2
    fi
    [ -f "$venv/requirements.txt" ] && pgq_py=$venv/bin/python
  fi
fi

# Each line gets its round, for summarize.py's worst-round ratio.
tag_round() { sed "s/^{/{\"round\":$round,/"; }

peer_dbs() {
  psql -Atq "$PG_SERVER/test" \
    -c "SELECT datname FROM pg_database WHERE datname ~ '^bench_(gw|apalis|pgq)_[0-9]+\$' ORDER BY 1"
}

# One run of a SQL peer harness: sql_peer NAME COMMAND... (it makes and drops its own database or
# file; one cut off by the timeout cannot, so the databases that appeared during its run are
# dropped here).
sql_peer() {
  local name=$1 before rc=0 db
  shift
  echo "# bench: $name" >&2
  before=$(peer_dbs || true)
  timeout -k 10 "$sql_limit" "$@" "$SQL_N" 2>>"$out/sql-peers.log" | tag_round >>"$out/sql-$name.jsonl" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "# bench: $name failed ($rc)" >&2
    for db in $(comm -13 <(echo "$before") <(peer_dbs || true)); do
      psql -q "$PG_SERVER/test" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
}

# orcs right after a peer, with the peers' phases, on a database or file of its own.
orcs_runs=0
orcs_sql() { # pg|sqlite
  local url file=""
  orcs_runs=$((orcs_runs + 1))
  if [ "$1" = pg ]; then
    orcs_db=orcs_bench_$$_$orcs_runs
    if ! psql -q "$PG_SERVER/test" -c "CREATE DATABASE $orcs_db" >/dev/null; then
      echo "# bench: cannot create the database $orcs_db" >&2
      orcs_db=""
      return 0
    fi
    url=$PG_SERVER/$orcs_db
  else
    file=$work/orcs-sql-$orcs_runs.db
    url=sqlite://$file
  fi
  echo "# bench: orcs on $1" >&2
  if [ "$1" = pg ]; then
    # Each phase on a clean table, as the peers' harnesses start theirs (see pg_phases).
    pg_phases single,bulk,drain,latency --driver database --url "$url" bench --n "$SQL_N" \
      2>>"$out/sql-peers.log" | tag_round >>"$out/sql-orcs-$1.jsonl"
  else
    timeout -k 10 "$sql_limit" "$orcs" --driver database --url "$url" bench --n "$SQL_N" \
      --phases single,bulk,drain,latency 2>>"$out/sql-peers.log" | tag_round >>"$out/sql-orcs-$1.jsonl" \
      || echo "# bench: orcs on $1 failed" >&2
  fi
  if [ -n "$orcs_db" ]; then
    psql -q "$PG_SERVER/test" -c "DROP DATABASE IF EXISTS $orcs_db WITH (FORCE)" >/dev/null 2>&1 || true
    orcs_db=""
  fi
  [ -n "$file" ] && rm -f "$file" "$file-wal" "$file-shm"
  return 0
}

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
      postgres)
        args=(--driver database --url "$PG_URL")
        fresh_pg_schema
        ;;
    esac
    phases=single,single-unique,bulk,drain,drain-batch,drain-limited,drain-features,latency
    [ "$driver" = redis ] && phases=$phases,backlog
    [ "$round" = 1 ] && [ -z "${SKIP_SCHEDULE:-}" ] && phases=$phases,schedule-latency
    cli flushdb >/dev/null
    if [ "$driver" = postgres ]; then
      pg_phases "$phases" "${args[@]}" bench --n "$N" --backlog "$BACKLOG" \
        --schedule-secs "${SCHEDULE_SECS:-30}" >>"$out/orcs-$driver.jsonl"
    else
      timeout 1200 "$orcs" "${args[@]}" bench --n "$N" --backlog "$BACKLOG" --phases "$phases" \
        --schedule-secs "${SCHEDULE_SECS:-30}" \
        >>"$out/orcs-$driver.jsonl" || echo "# bench: orcs on $driver failed" >&2
    fi
    if [ -z "${SKIP_OPS:-}" ]; then
      ops=ops-cost
      # The memory driver's backlog is this process's heap: its scrape is a map lookup.
      [ "$driver" != memory ] && ops=ops-latency,ops-cost
      cli flushdb >/dev/null
      timeout 1800 "$orcs" "${args[@]}" bench --n "${OPS_N:-200000}" --backlog "$BACKLOG" \
        --phases "$ops" >>"$out/orcs-$driver-ops.jsonl" || echo "# bench: orcs ops on $driver failed" >&2
    fi
  done
  if has_driver redis; then
    memory_line orcs "$orcs" --driver redis --url "$redis_url" bench --n "$N" --phases fill >>"$out/orcs-redis-memory.jsonl"
  fi
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
  if has_driver postgres; then
    # graphile_worker with its LocalQueue: with its defaults a queued backlog drains at
    # concurrency / poll interval (64 jobs/s; see README-sql.md in the peers).
    if [ -n "$gw_bin" ]; then
      DATABASE_URL="$PG_SERVER/test" GW_LOCAL_QUEUE=100 sql_peer graphile "$gw_bin"
      orcs_sql pg
    fi
    if [ -n "$apalis_sql_bin" ]; then
      DATABASE_URL="$PG_SERVER/test" sql_peer apalis-pg "$apalis_sql_bin"
      orcs_sql pg
    fi
    if [ -n "$pgq_py" ]; then
      DATABASE_URL="$PG_SERVER/test" sql_peer pgqueuer "$pgq_py" "$sql_cache/src/pgqueuer/bench.py"
      orcs_sql pg
    fi
  fi
  if has_driver sqlite && [ -n "$apalis_sql_bin" ]; then
    # The harness takes a file that does not exist yet, and deletes it at the end.
    sqlite_file=$work/apalis-sqlite-$round.db
    DATABASE_URL="sqlite://$sqlite_file" sql_peer apalis-sqlite "$apalis_sql_bin"
    rm -f "$sqlite_file" "$sqlite_file-wal" "$sqlite_file-shm"
    orcs_sql sqlite
  fi
done

if [ -f "$out/orcs-redis-memory.jsonl" ]; then cat "$out/orcs-redis-memory.jsonl" >>"$out/orcs-redis.jsonl"; fi
if [ -f "$out/bullmq-memory.jsonl" ]; then cat "$out/bullmq-memory.jsonl" >>"$out/bullmq.jsonl"; fi

if has_driver redis || [ "$have_peers" = 1 ]; then
  echo
  echo "Redis (N = $N, backlog $BACKLOG, $ROUNDS rounds, $(nproc) cores, $(redis-server --version | cut -d' ' -f3)):"
  echo
  columns=()
  [ -f "$out/bullmq.jsonl" ] && columns+=("BullMQ=$out/bullmq.jsonl")
  columns+=("orcs redis=$out/orcs-redis.jsonl")
  [ -f "$out/apalis.jsonl" ] && columns+=("apalis=$out/apalis.jsonl")
  python3 scripts/bench/summarize.py "${columns[@]}"
fi
# The SQL peers' tables: orcs first (the other cells' ratios are to it), and in the last column
# orcs over the best peer of each metric, with the worst round's ratio.
if [ -f "$out/sql-orcs-pg.jsonl" ]; then
  echo
  echo "PostgreSQL (N = $SQL_N, $ROUNDS rounds, orcs right after each peer, each run on a database of" \
    "its own; $(psql -Atq "$PG_SERVER/test" -c 'SHOW server_version' | cut -d' ' -f1); load average" \
    "$(cut -d' ' -f1-3 /proc/loadavg)):"
  echo
  columns=("orcs=$out/sql-orcs-pg.jsonl")
  [ -f "$out/sql-graphile.jsonl" ] && columns+=("graphile_worker (LocalQueue 100)=$out/sql-graphile.jsonl")
  [ -f "$out/sql-apalis-pg.jsonl" ] && columns+=("apalis-postgres=$out/sql-apalis-pg.jsonl")
  [ -f "$out/sql-pgqueuer.jsonl" ] && columns+=("pgqueuer=$out/sql-pgqueuer.jsonl")
  python3 scripts/bench/summarize.py --ours orcs "${columns[@]}"
fi
if [ -f "$out/sql-orcs-sqlite.jsonl" ]; then
  echo
  echo "SQLite (N = $SQL_N, $ROUNDS rounds, orcs right after the peer, each run on a file of its own in /tmp," \
    "WAL; load average $(cut -d' ' -f1-3 /proc/loadavg)):"
  echo
  python3 scripts/bench/summarize.py --ours orcs "orcs=$out/sql-orcs-sqlite.jsonl" \
    "apalis-sqlite=$out/sql-apalis-sqlite.jsonl"
fi
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
