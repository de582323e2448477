#!/usr/bin/env bash
# Native monitoring for machines without Docker: Debian's prometheus and
# prometheus-postgres-exporter with the stack's own configuration (monitoring/prometheus), targets
# on 127.0.0.1.
#
#   scripts/monitoring.sh render OUT_DIR      write OUT_DIR/prometheus.yml (+ rules link)
#   scripts/monitoring.sh start RUN_DIR DB    render into RUN_DIR/prometheus and start both
#
# Addresses (env): NGSIFLOW_ADDR (127.0.0.1:8000), PG_EXPORTER_ADDR (127.0.0.1:9187),
# PROMETHEUS_ADDR (127.0.0.1:9090), SCRAPE_INTERVAL (15s). The kafka-exporter and kafka-connect
# jobs are dropped: neither can be installed here (see README, Monitoring).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NGSIFLOW_ADDR="${NGSIFLOW_ADDR:-127.0.0.1:8000}"
PG_EXPORTER_ADDR="${PG_EXPORTER_ADDR:-127.0.0.1:9187}"
PROMETHEUS_ADDR="${PROMETHEUS_ADDR:-127.0.0.1:9090}"
SCRAPE_INTERVAL="${SCRAPE_INTERVAL:-15s}"

render() {
  local out="$1"
  mkdir -p "$out"
  awk -v ngsiflow="$NGSIFLOW_ADDR" -v pgexp="$PG_EXPORTER_ADDR" -v prom="$PROMETHEUS_ADDR" -v interval="$SCRAPE_INTERVAL" '
    /^  - job_name: / { skip = ($3 == "kafka-exporter" || $3 == "kafka-connect") }
    skip { next }
    /^  (scrape|evaluation)_interval: / { sub(/: .*/, ": " interval) }
    { gsub(/"ngsiflow:8000"/, "\"" ngsiflow "\""); gsub(/"postgres-exporter:9187"/, "\"" pgexp "\"");
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
    RUN_DIR="${2:?RUN_DIR}"; DB="${3:?DB}"
    render "$RUN_DIR/prometheus"
    if ! { [ -f "$RUN_DIR/postgres-exporter.pid" ] && kill -0 "$(cat "$RUN_DIR/postgres-exporter.pid")" 2>/dev/null; }; then
      DATA_SOURCE_NAME="postgresql://postgres@127.0.0.1:5432/$DB?sslmode=disable" \
        prometheus-postgres-exporter --web.listen-address="$PG_EXPORTER_ADDR" \
        >"$RUN_DIR/postgres-exporter.log" 2>&1 &
      echo $! >"$RUN_DIR/postgres-exporter.pid"
    fi
    if ! { [ -f "$RUN_DIR/prometheus.pid" ] && kill -0 "$(cat "$RUN_DIR/prometheus.pid")" 2>/dev/null; }; then
      prometheus --config.file="$RUN_DIR/prometheus/prometheus.yml" \
        --storage.tsdb.path="$RUN_DIR/prometheus/data" --web.listen-address="$PROMETHEUS_ADDR" \
        >"$RUN_DIR/prometheus.log" 2>&1 &
      echo $! >"$RUN_DIR/prometheus.pid"
    fi
    echo "[ngsiflow] Prometheus http://$PROMETHEUS_ADDR (targets: /targets), postgres-exporter http://$PG_EXPORTER_ADDR/metrics" >&2
    ;;
  *)
    echo "usage: $0 render OUT_DIR | start RUN_DIR DB" >&2; exit 2 ;;
esac
