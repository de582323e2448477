# Shared helpers for ngsiflow's scripts (sourced, not run).
NGSIFLOW_CACHE_DIR="${NGSIFLOW_CACHE_DIR:-$HOME/.cache/ngsiflow}"
TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
export NGSIFLOW_TANSU_BIN="${NGSIFLOW_TANSU_BIN:-$NGSIFLOW_CACHE_DIR/tansu-$TANSU_VERSION/bin/tansu}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

log() { echo "[ngsiflow] $*" >&2; }

# Starts the system PostgreSQL cluster if it is not accepting connections.
ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q; then return 0; fi
  local ver
  ver="$(ls /etc/postgresql | sort -n | tail -1)"
  log "starting PostgreSQL $ver"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 50); do pg_isready -h 127.0.0.1 -p 5432 -q && return 0; sleep 0.2; done
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
