# Starts a throwaway PostgreSQL server on 127.0.0.1 (free port, temporary data directory)
# for the run-metadata-store tests and exports KILN_TEST_POSTGRES_URL. Sourced by .ci/run.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  echo "== installing PostgreSQL"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
kiln_pg_dir=$(mktemp -d /tmp/kiln-pg.XXXXXX)
kiln_pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
kiln_as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then chown postgres "$kiln_pg_dir"; fi
kiln_as_pg "$pg_bin/initdb" -D "$kiln_pg_dir/data" -U kiln --auth=trust >/dev/null
kiln_as_pg "$pg_bin/pg_ctl" -D "$kiln_pg_dir/data" -l "$kiln_pg_dir/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $kiln_pg_port -k $kiln_pg_dir" start >/dev/null
kiln_as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$kiln_pg_port" -U kiln kiln_test
export KILN_TEST_POSTGRES_URL="postgres://kiln@127.0.0.1:$kiln_pg_port/kiln_test"
kiln_pg_stop() { kiln_as_pg "$pg_bin/pg_ctl" -D "$kiln_pg_dir/data" -m fast stop >/dev/null 2>&1 || true; }
if [ -z "$(trap -p EXIT)" ]; then trap kiln_pg_stop EXIT; fi
echo "== PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$kiln_pg_port ($KILN_TEST_POSTGRES_URL)"
