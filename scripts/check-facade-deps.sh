#!/usr/bin/env bash
# Fails if the `orcs` facade, with every feature, pulls in a command-line-only dependency.
#
# An application adds `orcs` to its Cargo.toml; whatever `orcs` depends on is compiled into the
# application. clap and indicatif belong to the `orcs` command (orcs-cli), and mimalloc would
# replace the application's global allocator behind its back, so none of them may reach the
# facade's normal (non-dev) dependency tree. Builds nothing: `cargo tree` only resolves.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden=(clap indicatif mimalloc)

tree=$(cargo tree -p orcs --all-features -e normal --prefix none --format '{p}')

found=()
for name in "${forbidden[@]}"; do
    # Each line is "NAME vX.Y.Z (...)"; clap_builder and friends count as clap.
    if grep -Eq "^${name}(_[a-z_]+)? v" <<<"$tree"; then
        found+=("$name")
    fi
done

if ((${#found[@]})); then
    echo "check-facade-deps: FAILED: the orcs facade depends on: ${found[*]}" >&2
    for name in "${found[@]}"; do
        echo "-- how ${name} gets in (cargo tree -p orcs --all-features -e normal -i ${name}):" >&2
        cargo tree -p orcs --all-features -e normal -i "$name" >&2 || true
    done
    echo "These are the command line's dependencies (orcs-cli); an application that adds orcs" >&2
    echo "would compile them too, and mimalloc would change its allocator. Keep them in orcs-cli," >&2
    echo "and have orcs-cli depend on orcs, never the other way round." >&2
    exit 1
fi

echo "check-facade-deps: ok: none of ${forbidden[*]} is in the dependency tree of orcs (all features)"
