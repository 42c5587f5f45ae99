#!/usr/bin/env bash
# Builds the Docker images the conformance suite starts under ORCS_TEST_DOCKER=1, from this
# machine's own binaries, with no registry:
#   orcs-test-redis:local     the host's redis-server, on 0.0.0.0:6379, protected mode off,
#                             no persistence
#   orcs-test-postgres:local  the host's PostgreSQL 15 (/usr/lib/postgresql/15), a cluster made
#                             by initdb at build time, trust authentication, database `test`,
#                             on 0.0.0.0:5432, run as the image's `postgres` user (uid 999)
# Each root filesystem holds the binaries and the shared libraries `ldd` lists (with the dynamic
# loader), and is loaded with `docker import`. Idempotent: an image whose `orcs.source` label
# matches the hash of the binaries and of this script is kept (a few seconds otherwise).
#   scripts/docker-images.sh [redis] [postgres]   # both when no argument is given
# ORCS_TEST_REDIS_IMAGE / ORCS_TEST_POSTGRES_IMAGE name the images (as the tests read them);
# ORCS_PG_VERSION picks the PostgreSQL major version (default: the newest installed).
set -euo pipefail

redis_image="${ORCS_TEST_REDIS_IMAGE:-orcs-test-redis:local}"
postgres_image="${ORCS_TEST_POSTGRES_IMAGE:-orcs-test-postgres:local}"
self="$(readlink -f "$0")"
pg_uid=999

die() { echo "docker-images: $*" >&2; exit 1; }
command -v docker >/dev/null 2>&1 || die "no docker client on PATH"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (is dockerd running?)"

work="$(mktemp -d "${TMPDIR:-/tmp}/orcs-docker-images.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 711 "$work" # initdb runs as another user when this runs as root

# The hash of the given files and of this script: the image is rebuilt when any changes.
source_hash() { sha256sum "$self" "$@" | sha256sum | cut -c1-16; }

# Removes the image that $1 named before a rebuild ($2, its id), unless something still uses it.
drop_old() {
  [ -n "$2" ] && [ "$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null)" != "$2" ] \
    && docker rmi "$2" >/dev/null 2>&1 || true
}

# The id of the image $1, or nothing.
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# True when the image exists with this hash.
up_to_date() {
  [ "$(docker image inspect -f '{{index .Config.Labels "orcs.source"}}' "$1" 2>/dev/null)" = "$2" ]
}

# Copies binaries and every library `ldd` lists for them into the root filesystem $1.
copy_with_libs() {
  local root="$1"; shift
  local lib
  # With several files, ldd heads each list with "file:", which is no existing path.
  { ldd "$@" 2>/dev/null || true; } | { grep -oE '/[^ ]+' || true; } | sort -u | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# A minimal /etc, /tmp and /dev/null-free skeleton (Docker mounts /dev, /proc, /sys itself).
skeleton() {
  local root="$1"
  mkdir -p "$root/etc" "$root/tmp" "$root/usr/bin"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/:/nonexistent\npostgres:x:%s:%s:postgres:/var/lib/postgresql:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' "$pg_uid" "$pg_uid" >"$root/etc/passwd"
  printf 'root:x:0:\npostgres:x:%s:\nnogroup:x:65534:\n' "$pg_uid" >"$root/etc/group"
  echo 'passwd: files' >"$root/etc/nsswitch.conf"
  echo 'group: files' >>"$root/etc/nsswitch.conf"
}

build_redis() {
  local server hash root started old
  server="$(command -v redis-server)" || die "no redis-server on PATH (apt-get install redis-server)"
  server="$(readlink -f "$server")"
  hash="$(source_hash "$server")"
  if up_to_date "$redis_image" "$hash"; then
    echo "docker-images: $redis_image is up to date ($hash)" >&2
    return
  fi
  started=$SECONDS
  old="$(image_id "$redis_image")"
  root="$work/redis"
  skeleton "$root"
  # The binary decides what it is from its name (redis-check-rdb vs redis-server).
  cp "$server" "$root/usr/bin/redis-server"
  copy_with_libs "$root" "$server"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/redis.tar" .
  docker import \
    --change 'CMD ["/usr/bin/redis-server", "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"]' \
    --change 'EXPOSE 6379' \
    --change "LABEL orcs.source=$hash" \
    --change 'LABEL orcs.role=redis' \
    "$work/redis.tar" "$redis_image" >/dev/null
  drop_old "$redis_image" "$old"
  echo "docker-images: built $redis_image ($hash) in $((SECONDS - started)) s" >&2
}

build_postgres() {
  local version home hash root data started old
  version="${ORCS_PG_VERSION:-$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)}"
  home="/usr/lib/postgresql/$version"
  [ -n "$version" ] && [ -x "$home/bin/postgres" ] \
    || die "no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)"
  [ -d "/usr/share/postgresql/$version" ] || die "no /usr/share/postgresql/$version"
  hash="$(source_hash "$home/bin/postgres" "$home/bin/initdb")"
  if up_to_date "$postgres_image" "$hash"; then
    echo "docker-images: $postgres_image is up to date ($hash)" >&2
    return
  fi
  started=$SECONDS
  old="$(image_id "$postgres_image")"
  root="$work/postgres"
  skeleton "$root"
  mkdir -p "$root$home/bin" "$root/usr/share/postgresql" "$root/usr/share/zoneinfo/Etc"
  cp "$home/bin/postgres" "$home/bin/initdb" "$home/bin/pg_ctl" "$root$home/bin/"
  cp -a "$home/lib" "$root$home/"
  rm -rf "$root$home/lib/bitcode" "$root$home"/lib/llvmjit*.so # the JIT and its LLVM (jit is off)
  cp -a "/usr/share/postgresql/$version" "$root/usr/share/postgresql/"
  cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
  cp -L /usr/share/zoneinfo/Etc/UTC "$root/usr/share/zoneinfo/Etc/UTC"
  copy_with_libs "$root" "$home/bin/postgres" "$home/bin/initdb" "$home/bin/pg_ctl" \
    "$root$home"/lib/*.so

  # The cluster is made here, once, with the host's initdb (PostgreSQL refuses to run as root,
  # so as `postgres` or `nobody` when this runs as root); the container only starts it.
  data="$work/pgdata"
  mkdir -p "$data"
  local as=()
  if [ "$(id -u)" = 0 ]; then
    local user=nobody
    id postgres >/dev/null 2>&1 && user=postgres
    chown "$user" "$data"
    as=(setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups --)
  fi
  "${as[@]}" "$home/bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C \
    --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log" >&2; die "initdb failed"; }
  echo "CREATE DATABASE test;" | "${as[@]}" "$home/bin/postgres" --single -D "$data" \
    -c timezone=UTC postgres >"$work/single.log" 2>&1 \
    || { cat "$work/single.log" >&2; die "creating the database test failed"; }
  cat >>"$data/postgresql.conf" <<'EOF'
# orcs-test-postgres: a throwaway server for tests
listen_addresses = '*'
port = 5432
unix_socket_directories = '/tmp'
timezone = 'UTC'
log_timezone = 'UTC'
fsync = off
synchronous_commit = off
full_page_writes = off
jit = off
max_connections = 200
EOF
  echo "host all all 0.0.0.0/0 trust" >>"$data/pg_hba.conf"
  echo "host all all ::/0 trust" >>"$data/pg_hba.conf"
  mkdir -p "$root/var/lib/postgresql"
  cp -a "$data" "$root/var/lib/postgresql/data"
  chmod 700 "$root/var/lib/postgresql/data"

  # Everything but the data directory belongs to root; the data directory to the image's
  # `postgres` user, which the container runs as.
  tar -C "$root" --numeric-owner --owner=0 --group=0 --exclude=./var/lib/postgresql \
    -cf "$work/postgres.tar" .
  tar -C "$root" --numeric-owner --owner="$pg_uid" --group="$pg_uid" \
    -rf "$work/postgres.tar" ./var/lib/postgresql
  docker import \
    --change "CMD [\"$home/bin/postgres\", \"-D\", \"/var/lib/postgresql/data\"]" \
    --change "USER $pg_uid:$pg_uid" \
    --change 'EXPOSE 5432' \
    --change "ENV PGDATA=/var/lib/postgresql/data" \
    --change "LABEL orcs.source=$hash" \
    --change 'LABEL orcs.role=postgres' \
    "$work/postgres.tar" "$postgres_image" >/dev/null
  drop_old "$postgres_image" "$old"
  echo "docker-images: built $postgres_image ($hash) in $((SECONDS - started)) s" >&2
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(redis postgres)
for target in "${targets[@]}"; do
  case "$target" in
    redis) build_redis ;;
    postgres) build_postgres ;;
    *) die "unknown image '$target' (redis or postgres)" ;;
  esac
done
