#!/usr/bin/env bash
# What CI runs (.ci/run): formatting, lints, the test suite with every service required, docs.
set -euo pipefail
cd "$(dirname "$0")/.."

export ORCS_TEST_REQUIRE_SERVICES=1
export CARGO_TERM_COLOR=never
scripts/services.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== the orcs crate pulls in no command-line dependency"
scripts/check-facade-deps.sh
echo "== chromium and chromedriver (the dashboard's browser test)"
{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
echo "== tests"
scripts/test.sh
echo "== conformance against Docker containers (Redis, PostgreSQL)"
command -v dockerd >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null; }
scripts/docker-conformance.sh
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
echo "== ci: all checks passed"
