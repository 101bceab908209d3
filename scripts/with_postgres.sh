#!/usr/bin/env bash
# Run a command beside a throwaway PostgreSQL server on 127.0.0.1, with NNTUNE_TEST_POSTGRES_URL pointing at it.
# Installs Debian's postgresql when it is missing (needs root and apt), and always stops the server afterwards.
# Without root or apt it runs the command without a server; the PostgreSQL tests then skip (CI requires them).
set -euo pipefail

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN=$(find_bin)
if [ -z "$BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian's postgresql for the storage tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  BIN=$(find_bin)
fi
if [ -z "$BIN" ]; then
  echo "PostgreSQL is not available: running without it" >&2
  exec "$@"
fi

DIR=$(mktemp -d /tmp/nntune-pg.XXXXXX)
PORT=${NNTUNE_PG_PORT:-55432}
AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$DIR"
  AS=(runuser -u postgres --)
fi
"${AS[@]}" "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -o "-h 127.0.0.1 -p $PORT -k $DIR -c max_connections=300" -l "$DIR/log" -w start >/dev/null
stop() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true
  rm -rf "$DIR"
}
trap stop EXIT
export NNTUNE_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$PORT/postgres"
"$@"
