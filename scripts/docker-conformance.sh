#!/usr/bin/env bash
# Runs the Redis and PostgreSQL drivers' conformance suites against containers
# (ORCS_TEST_DOCKER=1, orcs-tests' `docker` feature), every service required (unless
# ORCS_TEST_REQUIRE_SERVICES=0: the Redis Cluster cases need a local redis-server).
#   - uses the Docker daemon if it answers; otherwise starts `dockerd` in the background (as root;
#     log: ${TMPDIR:-/tmp}/orcs-dockerd.log) and stops that one, by its pid, at the end
#   - builds the images from this machine's binaries (scripts/docker-images.sh), unless
#     ORCS_TEST_REDIS_IMAGE / ORCS_TEST_POSTGRES_IMAGE name others (e.g. redis:7, postgres:16)
#   - runs `cargo test -p orcs-redis --test conformance` and `... -p orcs-database ...`
# Extra arguments go to both test binaries (e.g. a name filter). Every step is bounded with
# `timeout`: ORCS_DOCKER_TEST_TIMEOUT seconds for each cargo run (default 1200, compiling
# included). Containers are removed when their test process ends; any left by a killed run
# (label orcs.test, process gone) are removed before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

test_timeout="${ORCS_DOCKER_TEST_TIMEOUT:-1200}"
log="${TMPDIR:-/tmp}/orcs-dockerd.log"
started_pid=""

say() { echo "docker-conformance: $*" >&2; }

stop_dockerd() {
  [ -n "$started_pid" ] || return 0
  say "stopping the dockerd this script started (pid $started_pid)"
  kill "$started_pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$started_pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$started_pid" 2>/dev/null; then
    say "dockerd (pid $started_pid) did not stop within 20 s; killing it"
    kill -9 "$started_pid" 2>/dev/null || true
  fi
  started_pid=""
}

# Removes the test containers whose test process is gone (a killed run's leftovers).
sweep() {
  local id pid
  for id in $(docker ps -aq --filter label=orcs.test 2>/dev/null); do
    pid="$(docker inspect -f '{{index .Config.Labels "orcs.test.pid"}}' "$id" 2>/dev/null || true)"
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
      docker rm -f -v "$id" >/dev/null 2>&1 || true
    fi
  done
}

cleanup() {
  local status=$?
  if docker info >/dev/null 2>&1; then
    # The watchers remove the containers within a second of their test process; then sweep.
    sleep 2
    sweep
  fi
  stop_dockerd
  exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM INT HUP # so that an outer `timeout` or a Ctrl-C still runs the cleanup

command -v docker >/dev/null 2>&1 || { say "no docker client on PATH (apt-get install docker.io)"; exit 1; }
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || { say "the Docker daemon does not answer and there is no dockerd (apt-get install docker.io)"; exit 1; }
  [ "$(id -u)" = 0 ] || { say "the Docker daemon does not answer; start it (only root can start dockerd here)"; exit 1; }
  say "starting dockerd (log: $log)"
  # A session of its own: a Ctrl-C or an outer `timeout` signals this script's process group, and
  # the daemon must outlive the tests to remove their containers; cleanup stops it by pid.
  setsid dockerd >"$log" 2>&1 </dev/null &
  started_pid=$!
  for _ in $(seq 300); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$started_pid" 2>/dev/null || { say "dockerd exited; see $log"; tail -n 20 "$log" >&2; started_pid=""; exit 1; }
    sleep 0.1
  done
  docker info >/dev/null 2>&1 || { say "dockerd did not answer within 30 s; see $log"; exit 1; }
fi
say "Docker $(docker version -f '{{.Server.Version}}' 2>/dev/null) answers"
sweep

t0=$SECONDS
targets=()
[ -n "${ORCS_TEST_REDIS_IMAGE:-}" ] || targets+=(redis)
[ -n "${ORCS_TEST_POSTGRES_IMAGE:-}" ] || targets+=(postgres)
if [ ${#targets[@]} -gt 0 ]; then
  timeout 300 scripts/docker-images.sh "${targets[@]}"
fi
say "images ready in $((SECONDS - t0)) s"

# The containers, not whatever services an explicit URL names.
unset ORCS_TEST_REDIS_URL ORCS_TEST_DATABASE_URL
export ORCS_TEST_DOCKER=1 ORCS_TEST_REQUIRE_SERVICES="${ORCS_TEST_REQUIRE_SERVICES:-1}"
status=0
for package in orcs-redis orcs-database; do
  t0=$SECONDS
  say "cargo test -p $package --test conformance --features orcs-tests/docker"
  if timeout "$test_timeout" cargo test -p "$package" --test conformance --features orcs-tests/docker -- "$@"; then
    say "$package against containers: passed in $((SECONDS - t0)) s"
  else
    say "$package against containers: FAILED (exit $?) after $((SECONDS - t0)) s"
    status=1
  fi
done
exit "$status"
