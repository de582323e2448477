#!/usr/bin/env bash
# Starts the ngsiflow stack with docker compose.
#   docker/docker-up.sh [--monitoring] [--build]
# --monitoring adds Prometheus, Grafana, kafka-exporter, postgres-exporter and Kafka Connect with
# the JMX exporter agent, and deploys the JDBC sink connector that runs beside ngsiflow (the same
# scripts/connect.sh deploy the native stack uses); --build rebuilds the images. Waits until every
# service is healthy.
set -euo pipefail
cd "$(dirname "$0")"
source ./compose-files.sh
profiles=()
build=()
for arg in "$@"; do
  case "$arg" in
    --monitoring) profiles=(--profile monitoring) ;;
    --build) build=(--build) ;;
    *) echo "usage: $0 [--monitoring] [--build]" >&2; exit 2 ;;
  esac
done
# ${a[@]+"${a[@]}"}: empty arrays are fine under set -u with bash before 4.4 too.
docker compose "${COMPOSE_ARGS[@]}" ${profiles[@]+"${profiles[@]}"} up -d --wait ${build[@]+"${build[@]}"}
if [ "${#profiles[@]}" -gt 0 ]; then
  # Values of .env unless exported (compose gives exported variables precedence too).
  POSTGRES_DB="${POSTGRES_DB:-$(sed -n 's/^POSTGRES_DB=//p' .env)}"
  POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-$(sed -n 's/^POSTGRES_PASSWORD=//p' .env)}"
  bash ../scripts/connect.sh deploy --rest http://127.0.0.1:8083 \
    --jdbc-url "jdbc:postgresql://postgis:5432/$POSTGRES_DB" --user postgres --password "$POSTGRES_PASSWORD" \
    --prefix "${NGSIFLOW_TOPIC_PREFIX:-}"
fi
cat <<INFO
ngsiflow     http://127.0.0.1:8000/health   (metrics /metrics)
Kafka        127.0.0.1:9092                 (ngsiflow produce --brokers 127.0.0.1:9092)
PostGIS      postgres://postgres@127.0.0.1:5432/ngsiflow
INFO
if [ "${#profiles[@]}" -gt 0 ]; then
  cat <<INFO
Grafana      http://127.0.0.1:3000          (dashboards in folder "ngsiflow"; anonymous viewer, admin/\${GRAFANA_ADMIN_PASSWORD})
Prometheus   http://127.0.0.1:9090          (targets: /targets, alerts: /alerts)
Connect      http://127.0.0.1:8083          (JMX metrics on :9404; connector ngsiflow-jdbc-sink)
INFO
fi
