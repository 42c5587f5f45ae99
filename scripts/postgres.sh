#!/usr/bin/env bash
# Makes sure the local PostgreSQL cluster answers on 127.0.0.1:5432 (database `test`, user
# `postgres`, trust authentication), starting it if it is not running, and prints the URL the
# database driver's tests use (ORCS_TEST_DATABASE_URL). Idempotent.
set -euo pipefail

url="${ORCS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

if ! pg_up; then
  if [ ! -d /etc/postgresql ] || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "postgres: no local PostgreSQL cluster is installed; set ORCS_TEST_DATABASE_URL to a server" >&2
    exit 1
  fi
  version="$(ls /etc/postgresql | sort -V | tail -n1)"
  echo "postgres: starting cluster $version/main" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 100); do pg_up && break; sleep 0.1; done
fi
pg_up || { echo "postgres: not answering on 127.0.0.1:5432; see /var/log/postgresql" >&2; exit 1; }
# Answering is not enough: the tests need the database and the role.
psql "$url" -qtAc 'SELECT 1' >/dev/null || {
  echo "postgres: $url refuses connections (does the database exist?)" >&2
  exit 1
}
echo "postgres: up at $url" >&2
echo "$url"
