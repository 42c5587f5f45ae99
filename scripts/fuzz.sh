#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (not part of CI).
#
#   scripts/fuzz.sh            # each target for 60 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh redis_record
#
# Targets: redis_record (stored Redis job records, as a worker decodes them on claim),
# config_file (config/queue.toml plus the environment), urls (REDIS_URL and DATABASE_URL:
# no panic, and a password never shown). Needs cargo-fuzz (`cargo install cargo-fuzz`, installed
# here if missing) and a nightly toolchain, or stable with RUSTC_BOOTSTRAP=1 (used when no
# nightly is installed). Findings go to fuzz/artifacts/<target>/; the corpus grows in
# fuzz/corpus/<target>/ (both ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(redis_record config_file urls)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
  cargo install --locked cargo-fuzz
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  echo "fuzz.sh: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
fi

# Seeds: a valid record and config, so the fuzzer starts from the interesting shapes.
mkdir -p corpus/redis_record corpus/config_file corpus/urls
printf '10|30000|3|60000|1767225600000|12|SendEmailJob{"to":"a@example.com"}' >corpus/redis_record/valid
printf '0||0|0|0|0|' >corpus/redis_record/empty-name
printf 'driver = "redis"\nmax_payload_bytes = 1024\n[redis]\nurl = "redis://h"\n[worker]\nqueues = ["a", "b"]\nsleep = 0.5\n\0QUEUE_WORKER_SLEEP=3\nQUEUE_DEFAULT=x\n' >corpus/config_file/valid
printf 'hunter22\0127.0.0.1:6379/0' >corpus/urls/valid

status=0
for target in "${targets[@]}"; do
  echo "== fuzz $target for ${seconds}s"
  if ! cargo "${toolchain[@]}" fuzz run "$target" -- -max_total_time="$seconds"; then
    echo "fuzz.sh: $target found a failure; see fuzz/artifacts/$target/" >&2
    status=1
  fi
done
exit "$status"
