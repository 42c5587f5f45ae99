#!/usr/bin/env bash
# The full kill -9 chaos run (issue #6; RELIABILITY.md): 20,000 jobs over three queues with mixed
# priorities, delays, retries and permanent failures; three workers at concurrency 16; a random
# worker killed with SIGKILL every 1-2 s for 60 s and replaced; then the survivors drain and the
# counts must be exact (failed == the jobs designed to fail for good, processed == the rest,
# nothing pending, delayed or reserved).
#
#   scripts/chaos.sh [batch] [redis|postgres|sqlite|all]     (default: all, one after the other)
#
# It runs the ignored test `<driver>_chaos_full` of orcs-cli/tests/reliability.rs, which starts a
# private redis-server or PostgreSQL cluster of its own (never the shared ones) on a free port.
# With `batch` (issue #12) it runs `<driver>_batch_chaos_full` of orcs-cli/tests/batches.rs
# instead: one batch of 20,000 children with a `then` callback, three workers, a random one
# killed with SIGKILL every 1-2 s for 60 s; then `then` must have run exactly once, after the
# last child ended, and `queue:batch --json` must count every child processed.
# Tuning: ORCS_CHAOS_JOBS (20000), ORCS_CHAOS_SECS (60), ORCS_CHAOS_WORK_MS (100),
# ORCS_CHAOS_SEED (replays a run's kill schedule); CHAOS_LIMIT_SECS bounds each driver's run
# (default: ORCS_CHAOS_SECS + 300). Each run is in a process group of its own, killed by its id
# when the run ends or the limit passes; the servers stop themselves once the test is gone.
set -euo pipefail
cd "$(dirname "$0")/.."

test_file=reliability
test_suffix=chaos_full
if [ "${1:-}" = batch ]; then
  test_file=batches
  test_suffix=batch_chaos_full
  shift
fi
which="${1:-all}"
case "$which" in
  redis|postgres|sqlite) drivers=("$which") ;;
  all) drivers=(redis postgres sqlite) ;;
  *) echo "usage: scripts/chaos.sh [batch] [redis|postgres|sqlite|all]" >&2; exit 2 ;;
esac

export ORCS_CHAOS_JOBS="${ORCS_CHAOS_JOBS:-20000}"
export ORCS_CHAOS_SECS="${ORCS_CHAOS_SECS:-60}"
# A missing redis-server or PostgreSQL is a failure here, not a skip.
export ORCS_TEST_REQUIRE_SERVICES=1
limit="${CHAOS_LIMIT_SECS:-$(( ${ORCS_CHAOS_SECS%.*} + 300 ))}"

echo "chaos: building the tests" >&2
cargo test -p orcs-cli --test "$test_file" --no-run --quiet

group=""
cleanup() {
  if [ -n "$group" ]; then
    kill -KILL -- "-$group" 2>/dev/null || true
    group=""
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

failed=()
summary=()
for driver in "${drivers[@]}"; do
  log="$(mktemp -t "orcs-chaos-$driver.XXXXXX")"
  echo "chaos: $driver: $ORCS_CHAOS_JOBS jobs ($test_file), kills for ${ORCS_CHAOS_SECS} s (limit ${limit} s); log $log" >&2
  started=$(date +%s)
  setsid cargo test -q -p orcs-cli --test "$test_file" "${driver}_${test_suffix}" -- \
    --ignored --exact --nocapture >"$log" 2>&1 &
  group=$!
  status=""
  while kill -0 "$group" 2>/dev/null; do
    if (( $(date +%s) - started > limit )); then
      echo "chaos: $driver: over the ${limit} s limit; killing process group $group" >&2
      cleanup
      status="timeout"
      break
    fi
    sleep 1
  done
  if [ -z "$status" ]; then
    if wait "$group"; then status="ok"; else status="FAILED"; fi
  else
    wait "$group" 2>/dev/null || true
  fi
  group=""
  grep -E '^chaos |^CHAOS ' "$log" >&2 || true
  line="$(grep -E '^CHAOS ' "$log" | tail -1 || true)"
  if [ "$status" != ok ]; then
    failed+=("$driver")
    grep -E "panicked|assert|left:|right:" "$log" | head -20 >&2 || true
    echo "chaos: $driver: $status after $(( $(date +%s) - started )) s; full log in $log" >&2
  else
    rm -f "$log"
  fi
  summary+=("$driver: $status (${line:-no figures})")
done

echo
echo "chaos results (ORCS_CHAOS_JOBS=$ORCS_CHAOS_JOBS ORCS_CHAOS_SECS=$ORCS_CHAOS_SECS):"
for s in "${summary[@]}"; do echo "  $s"; done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "chaos: failed: ${failed[*]}" >&2
  exit 1
fi
