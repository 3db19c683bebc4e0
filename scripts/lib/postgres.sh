# shellcheck shell=bash
# A throwaway PostgreSQL server for the run-metadata-store tests. Sourced by scripts/test.sh
# after scripts/lib/apt.sh; defines functions only and installs no trap (the caller's cleanup
# calls kiln_pg_stop).
#
#   kiln_pg_start   installs Debian's postgresql with apt-get if it is missing, starts a server
#                   on 127.0.0.1 on a free port with a temporary data directory and exports
#                   KILN_TEST_POSTGRES_URL. Returns 2 when PostgreSQL is missing and cannot be
#                   installed (no apt-get, or not root and no passwordless sudo), 1 on any
#                   other failure.
#   kiln_pg_stop    stops that server and removes its directory; safe to call more than once.
#
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
# Callers may run under `set -e`, which bash disables inside `f || ...`: every step below
# checks its own status.

kiln_pg_dir=""
kiln_pg_bin=""

kiln_pg_find_bin() {
  local bin
  bin=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [ -n "$bin" ] && [ -x "$bin/initdb" ]; then echo "$bin"; fi
}

kiln_as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

kiln_pg_start() {
  local port rc
  kiln_pg_bin=$(kiln_pg_find_bin)
  if [ -z "$kiln_pg_bin" ]; then
    echo "PostgreSQL is not installed: installing Debian's postgresql"
    kiln_apt_install postgresql || { rc=$?; return "$rc"; }
    kiln_pg_bin=$(kiln_pg_find_bin)
    [ -n "$kiln_pg_bin" ] || { echo "no /usr/lib/postgresql/*/bin/initdb after installing" >&2; return 1; }
  fi
  kiln_pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/kiln-pg.XXXXXX") || return 1
  if [ "$(id -u)" = 0 ]; then chown postgres "$kiln_pg_dir" || return 1; fi
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || return 1
  # Throwaway data: no fsync at initdb or while running (the tests need no durability).
  kiln_as_pg "$kiln_pg_bin/initdb" -D "$kiln_pg_dir/data" -U kiln --auth=trust --no-sync >/dev/null \
    || return 1
  kiln_as_pg "$kiln_pg_bin/pg_ctl" -D "$kiln_pg_dir/data" -l "$kiln_pg_dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $kiln_pg_dir -c fsync=off" start >/dev/null \
    || { cat "$kiln_pg_dir/server.log" >&2 2>/dev/null; return 1; }
  kiln_as_pg "$kiln_pg_bin/createdb" -h 127.0.0.1 -p "$port" -U kiln kiln_test || return 1
  export KILN_TEST_POSTGRES_URL="postgres://kiln@127.0.0.1:$port/kiln_test"
  echo "PostgreSQL $("$kiln_pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($KILN_TEST_POSTGRES_URL)"
}

kiln_pg_stop() {
  [ -n "$kiln_pg_dir" ] || return 0
  if [ -f "$kiln_pg_dir/data/postmaster.pid" ]; then
    # Immediate: no shutdown checkpoint, the data directory is deleted next.
    kiln_as_pg "$kiln_pg_bin/pg_ctl" -D "$kiln_pg_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$kiln_pg_dir"
  kiln_pg_dir=""
  unset KILN_TEST_POSTGRES_URL
}
