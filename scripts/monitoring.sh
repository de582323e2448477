#!/usr/bin/env bash
# Native monitoring for machines without Docker: Debian's prometheus and
# prometheus-postgres-exporter, kafka_exporter when installed, with the stack's own configuration
# (monitoring/prometheus) rendered for 127.0.0.1. Kafka Connect and its JMX agent are started by
# scripts/connect.sh; this script only scrapes them.
#
#   scripts/monitoring.sh render OUT_DIR             write OUT_DIR/prometheus.yml (+ rules link)
#   scripts/monitoring.sh start RUN_DIR DB BROKERS   render into RUN_DIR/prometheus and start the
#                                                     exporters and Prometheus (idempotent)
#   scripts/monitoring.sh stop RUN_DIR
#
# Addresses (env): NGSIFLOW_ADDR (127.0.0.1:8000), PG_EXPORTER_ADDR (127.0.0.1:9187),
# KAFKA_EXPORTER_ADDR (127.0.0.1:9308; empty drops the job), CONNECT_JMX_ADDR (127.0.0.1:9404),
# PROMETHEUS_ADDR (127.0.0.1:9090), SCRAPE_INTERVAL (15s).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"
NGSIFLOW_ADDR="${NGSIFLOW_ADDR:-127.0.0.1:8000}"
PG_EXPORTER_ADDR="${PG_EXPORTER_ADDR:-127.0.0.1:9187}"
CONNECT_JMX_ADDR="${CONNECT_JMX_ADDR:-127.0.0.1:9404}"
PROMETHEUS_ADDR="${PROMETHEUS_ADDR:-127.0.0.1:9090}"
SCRAPE_INTERVAL="${SCRAPE_INTERVAL:-15s}"
# kafka_exporter cannot be installed on every machine (see scripts/install-deps.sh): without the
# binary its job is left out, so every remaining target can be up.
if [ -x "$KAFKA_EXPORTER_BIN" ]; then
  KAFKA_EXPORTER_ADDR="${KAFKA_EXPORTER_ADDR-127.0.0.1:9308}"
else
  KAFKA_EXPORTER_ADDR="${KAFKA_EXPORTER_ADDR-}"
fi

render() {
  local out="$1"
  mkdir -p "$out"
  awk -v ngsiflow="$NGSIFLOW_ADDR" -v pgexp="$PG_EXPORTER_ADDR" -v kexp="$KAFKA_EXPORTER_ADDR" \
      -v connect="$CONNECT_JMX_ADDR" -v prom="$PROMETHEUS_ADDR" -v interval="$SCRAPE_INTERVAL" '
    /^  - job_name: / { skip = ($3 == "kafka-exporter" && kexp == "") }
    skip { next }
    /^  (scrape|evaluation)_interval: / { sub(/: .*/, ": " interval) }
    { gsub(/"ngsiflow:8000"/, "\"" ngsiflow "\""); gsub(/"postgres-exporter:9187"/, "\"" pgexp "\"");
      gsub(/"kafka-exporter:9308"/, "\"" kexp "\""); gsub(/"kafka-connect:9404"/, "\"" connect "\"");
      gsub(/"prometheus:9090"/, "\"" prom "\""); print }
  ' "$ROOT/monitoring/prometheus/prometheus.yml" >"$out/prometheus.yml"
  ln -sfn "$ROOT/monitoring/prometheus/rules" "$out/rules"
  promtool check config "$out/prometheus.yml" >/dev/null
}

case "${1:-}" in
  render)
    render "${2:?OUT_DIR}"
    ;;
  start)
    RUN_DIR="${2:?RUN_DIR}"; DB="${3:?DB}"; BROKERS="${4:?BROKERS}"
    render "$RUN_DIR/prometheus"
    if ! pid_running "$RUN_DIR/postgres-exporter.pid"; then
      DATA_SOURCE_NAME="postgresql://postgres@127.0.0.1:5432/$DB?sslmode=disable" \
        setsid prometheus-postgres-exporter --web.listen-address="$PG_EXPORTER_ADDR" \
        >"$RUN_DIR/postgres-exporter.log" 2>&1 </dev/null &
      echo $! >"$RUN_DIR/postgres-exporter.pid"
    fi
    if [ -n "$KAFKA_EXPORTER_ADDR" ] && ! pid_running "$RUN_DIR/kafka-exporter.pid"; then
      setsid "$KAFKA_EXPORTER_BIN" --kafka.server="$BROKERS" --kafka.version=3.6.0 \
        --web.listen-address="$KAFKA_EXPORTER_ADDR" >"$RUN_DIR/kafka-exporter.log" 2>&1 </dev/null &
      echo $! >"$RUN_DIR/kafka-exporter.pid"
    fi
    if ! pid_running "$RUN_DIR/prometheus.pid"; then
      setsid prometheus --config.file="$RUN_DIR/prometheus/prometheus.yml" \
        --storage.tsdb.path="$RUN_DIR/prometheus/data" --web.listen-address="$PROMETHEUS_ADDR" \
        >"$RUN_DIR/prometheus.log" 2>&1 </dev/null &
      echo $! >"$RUN_DIR/prometheus.pid"
    fi
    log "Prometheus http://$PROMETHEUS_ADDR (targets: /targets), postgres-exporter http://$PG_EXPORTER_ADDR/metrics${KAFKA_EXPORTER_ADDR:+, kafka_exporter http://$KAFKA_EXPORTER_ADDR/metrics}"
    ;;
  stop)
    RUN_DIR="${2:?RUN_DIR}"
    for p in prometheus kafka-exporter postgres-exporter; do stop_pidfile "$RUN_DIR/$p.pid"; done
    ;;
  *)
    echo "usage: $0 render OUT_DIR | start RUN_DIR DB BROKERS | stop RUN_DIR" >&2; exit 2 ;;
esac
