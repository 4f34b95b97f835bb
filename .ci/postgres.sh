#!/usr/bin/env bash
# Starts (start) or stops (stop) a throwaway PostgreSQL cluster on 127.0.0.1 for tests.
# Prints the URL to use as HERALD_TEST_POSTGRES_URL on start. Installs PostgreSQL with
# apt-get when the machine has none.
set -euo pipefail
PGDIR=${HERALD_PG_DIR:-/tmp/herald-ci-pg}
PGPORT=${HERALD_PG_PORT:-55432}

find_bin() {
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
}

case "${1:-start}" in
start)
  BIN=$(find_bin || true)
  if [ -z "$BIN" ]; then
    echo "installing PostgreSQL with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN=$(find_bin)
  fi
  RUNAS=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    RUNAS=(runuser -u postgres --)
  fi
  if [ -f "$PGDIR/data/postmaster.pid" ]; then
    "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGDIR/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PGDIR"; mkdir -p "$PGDIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
  "${RUNAS[@]}" "$BIN/initdb" -D "$PGDIR/data" -U herald --auth=trust -E UTF8 --no-locale >/dev/null
  "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-h 127.0.0.1 -p $PGPORT -k $PGDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" start >/dev/null
  "$BIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U herald herald_test
  echo "postgres://herald@127.0.0.1:$PGPORT/herald_test?sslmode=disable"
  ;;
stop)
  BIN=$(find_bin || true)
  [ -n "$BIN" ] && [ -f "$PGDIR/data/postmaster.pid" ] || exit 0
  RUNAS=()
  [ "$(id -u)" = 0 ] && RUNAS=(runuser -u postgres --)
  "${RUNAS[@]}" "$BIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null
  ;;
esac
