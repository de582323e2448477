#!/usr/bin/env bash
# The main job, locally and without Docker: installs and starts PostGIS (system PostgreSQL 15),
# a tansu Kafka-protocol broker (built once and cached), creates the sample tables, builds and
# starts the worker, produces the built-in samples and prints the rows per table.
#
#   scripts/local-stack.sh [--monitoring] [--count N]   start (idempotent) and produce samples
#   scripts/local-stack.sh stop                          stop what it started
#
# Ports: broker 127.0.0.1:9092, worker admin 127.0.0.1:8000, with --monitoring Prometheus
# 127.0.0.1:9090 and postgres-exporter 127.0.0.1:9187. State and logs live in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUN_DIR="$PWD/.run"
DB="${NGSIFLOW_DB:-ngsiflow}"
BROKER="127.0.0.1:9092"
ADMIN="127.0.0.1:8000"
COUNT=""
MONITORING=0
mkdir -p "$RUN_DIR"

stop_pid() { # name
  local f="$RUN_DIR/$1.pid"
  if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$(cat "$f")" 2>/dev/null || true
  fi
  rm -f "$f"
}

running() { [ -f "$RUN_DIR/$1.pid" ] && kill -0 "$(cat "$RUN_DIR/$1.pid")" 2>/dev/null; }

if [ "${1:-}" = "stop" ]; then
  for p in worker prometheus postgres-exporter broker; do stop_pid "$p"; done
  log "stopped"; exit 0
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --monitoring) MONITORING=1 ;;
    --count) COUNT="$2"; shift ;;
    *) echo "usage: $0 [--monitoring] [--count N] | stop" >&2; exit 2 ;;
  esac
  shift
done

bash scripts/install-deps.sh >/dev/null
ensure_postgres
ensure_database "$DB"
PG_URL="postgres://postgres@127.0.0.1:5432/$DB"

if ! running broker; then
  log "starting tansu on $BROKER"
  "$NGSIFLOW_TANSU_BIN" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
    --storage-engine memory://tansu/ >"$RUN_DIR/broker.log" 2>&1 &
  echo $! >"$RUN_DIR/broker.pid"
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
fi

log "building ngsiflow (release)"
cargo build --release --locked -q
BIN="$PWD/target/release/ngsiflow"

if ! running worker; then
  log "starting the worker (admin on $ADMIN)"
  NGSIFLOW_LOG_LEVEL=info "$BIN" run --brokers "$BROKER" --pg-url "$PG_URL" --admin-addr "$ADMIN" \
    --flows-dir flows >"$RUN_DIR/worker.log" 2>&1 &
  echo $! >"$RUN_DIR/worker.pid"
fi
for _ in $(seq 1 150); do
  curl -sf "http://$ADMIN/ready" >/dev/null 2>&1 && break
  running worker || { cat "$RUN_DIR/worker.log"; exit 1; }
  sleep 0.2
done

if [ "$MONITORING" = 1 ]; then
  bash scripts/monitoring.sh start "$RUN_DIR" "$DB"
fi

log "producing samples"
"$BIN" produce --brokers "$BROKER" ${COUNT:+--count "$COUNT"}
sleep 2
log "rows per table in database $DB:"
print_row_counts "$PG_URL"
log "worker: http://$ADMIN/health  metrics: http://$ADMIN/metrics  logs: $RUN_DIR/worker.log"
log "stop with: scripts/local-stack.sh stop"
