# Shared helpers for ngsiflow's scripts (sourced, not run).
# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"
NGSIFLOW_CACHE_DIR="${NGSIFLOW_CACHE_DIR:-$HOME/.cache/ngsiflow}"
# Where scripts/install-deps.sh puts each component, by version.
KAFKA_LIBS="$NGSIFLOW_CACHE_DIR/kafka-$KAFKA_VERSION/libs"
JMX_AGENT_JAR="$NGSIFLOW_CACHE_DIR/jmx-exporter-$JMX_EXPORTER_VERSION/jmx_prometheus_javaagent.jar"
CONNECT_PLUGIN_DIR="$NGSIFLOW_CACHE_DIR/connect-plugins-debezium-$DEBEZIUM_VERSION-hibernate-$HIBERNATE_VERSION"
KAFKA_EXPORTER_BIN="$NGSIFLOW_CACHE_DIR/kafka_exporter-$KAFKA_EXPORTER_VERSION/kafka_exporter"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

log() { echo "[ngsiflow] $*" >&2; }

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# True when the pid in file $1 is alive.
pid_running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# SIGTERM the process (group) in pid file $1, SIGKILL after $2 seconds (default 10), remove it.
stop_pidfile() {
  local f="$1" secs="${2:-10}" pid
  if pid_running "$f"; then
    pid="$(cat "$f")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Starts the PostgreSQL cluster if it is not accepting connections (scripts/install-deps.sh
# creates it and sets trust for 127.0.0.1).
ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q; then return 0; fi
  log "starting PostgreSQL $POSTGRES_MAJOR"
  pg_ctlcluster --skip-systemctl-redirect "$POSTGRES_MAJOR" main start || true
  for _ in $(seq 1 100); do pg_isready -h 127.0.0.1 -p 5432 -q && return 0; sleep 0.2; done
  log "PostgreSQL did not start"; return 1
}

# Creates database $1 if missing, with PostGIS and the sample tables.
ensure_database() {
  local db="$1"
  if ! psql "$PG_ADMIN_URL" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE \"$db\""
  fi
  psql "postgres://postgres@127.0.0.1:5432/$db" -q -v ON_ERROR_STOP=1 -f "$(dirname "${BASH_SOURCE[0]}")/sample-tables.sql" >/dev/null
}

# Prints the exact row count of every table outside public/system schemas of database URL $1.
print_row_counts() {
  psql "$1" -P pager=off -c "
    SELECT table_schema || '.' || table_name AS \"table\",
           (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text::bigint AS rows
    FROM information_schema.tables
    WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema', 'public', 'topology', 'tiger', 'tiger_data')
    ORDER BY 1"
}
