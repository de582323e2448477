#!/usr/bin/env bash
# The main job, locally and without Docker: installs what is missing (scripts/install-deps.sh),
# starts PostgreSQL + PostGIS and a single-node Apache Kafka broker (KRaft), creates the sample
# tables, builds and starts the worker, produces the built-in samples and prints the rows per
# table. With --monitoring it also starts Kafka Connect (distributed, one worker) with the
# Prometheus JMX exporter agent, deploys the JDBC sink connector that runs beside ngsiflow, and
# starts postgres-exporter, kafka_exporter (where installed) and Prometheus.
#
#   scripts/local-stack.sh [--monitoring] [--count N]   start (idempotent) and produce samples
#   scripts/local-stack.sh stop                          stop what it started
#
# Ports (127.0.0.1): Kafka 9092, worker admin 8000; with --monitoring Kafka Connect REST 8083,
# Connect JMX metrics 9404, Prometheus 9090, postgres-exporter 9187, kafka_exporter 9308.
# State and logs live in .run/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUN_DIR="$PWD/.run"
DB="${NGSIFLOW_DB:-ngsiflow}"
BROKER="127.0.0.1:9092"
ADMIN="127.0.0.1:8000"
CONNECT_REST="http://127.0.0.1:8083"
COUNT=""
MONITORING=0
mkdir -p "$RUN_DIR"

if [ "${1:-}" = "stop" ]; then
  stop_pidfile "$RUN_DIR/worker.pid" 30
  bash scripts/monitoring.sh stop "$RUN_DIR"
  bash scripts/connect.sh stop --dir "$RUN_DIR/connect"
  bash scripts/kafka.sh stop --dir "$RUN_DIR/kafka"
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

bash scripts/install-deps.sh
ensure_postgres
ensure_database "$DB"
PG_URL="postgres://postgres@127.0.0.1:5432/$DB"

log "starting Apache Kafka $KAFKA_VERSION on $BROKER"
bash scripts/kafka.sh start --port 9092 --dir "$RUN_DIR/kafka" --partitions 3

log "building ngsiflow (release)"
cargo build --release --locked -q
BIN="$PWD/target/release/ngsiflow"

if ! pid_running "$RUN_DIR/worker.pid"; then
  log "starting the worker (admin on $ADMIN)"
  NGSIFLOW_LOG_LEVEL=info setsid "$BIN" run --brokers "$BROKER" --pg-url "$PG_URL" --admin-addr "$ADMIN" \
    --flows-dir flows >"$RUN_DIR/worker.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/worker.pid"
fi
for _ in $(seq 1 300); do
  curl -sf "http://$ADMIN/ready" >/dev/null 2>&1 && break
  pid_running "$RUN_DIR/worker.pid" || { cat "$RUN_DIR/worker.log"; exit 1; }
  sleep 0.2
done

if [ "$MONITORING" = 1 ]; then
  log "starting Kafka Connect $KAFKA_VERSION (REST $CONNECT_REST, JMX metrics 127.0.0.1:9404)"
  bash scripts/connect.sh start --brokers "$BROKER" --dir "$RUN_DIR/connect" --rest-port 8083 --jmx-port 9404
  log "deploying Debezium's JDBC sink $DEBEZIUM_VERSION (demo_historic_processed -> demo.processed_events)"
  bash scripts/connect.sh deploy --rest "$CONNECT_REST" --jdbc-url "jdbc:postgresql://127.0.0.1:5432/$DB"
  bash scripts/monitoring.sh start "$RUN_DIR" "$DB" "$BROKER"
fi

log "producing samples"
"$BIN" produce --brokers "$BROKER" ${COUNT:+--count "$COUNT"}
sleep 2
log "rows per table in database $DB:"
print_row_counts "$PG_URL"
log "worker: http://$ADMIN/health  metrics: http://$ADMIN/metrics  logs: $RUN_DIR/worker.log"
log "stop with: scripts/local-stack.sh stop"
