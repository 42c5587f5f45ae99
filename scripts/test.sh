#!/usr/bin/env bash
# The test command: the whole workspace's tests against real services.
# Redis tests start their own redis-server on a free loopback port unless ORCS_TEST_REDIS_URL is
# set; PostgreSQL tests use ORCS_TEST_DATABASE_URL (default: the local server, database `test`).
# Set ORCS_TEST_REQUIRE_SERVICES=1 to make a missing service fail the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

export ORCS_TEST_DATABASE_URL="${ORCS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
if [ "${ORCS_TEST_REQUIRE_SERVICES:-}" = 1 ]; then
  scripts/services.sh
fi
cargo test --workspace --all-features "$@"
