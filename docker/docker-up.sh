#!/usr/bin/env bash
# Starts the ngsiflow stack with docker compose.
#   docker/docker-up.sh [--monitoring] [--build]
# --monitoring adds Prometheus, Grafana, kafka-exporter, postgres-exporter and Kafka Connect with
# the JMX exporter agent; --build rebuilds the ngsiflow image. Waits until every service is
# healthy (or has completed, for the init container).
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
cat <<INFO
ngsiflow     http://127.0.0.1:8000/health   (metrics /metrics)
Kafka        127.0.0.1:9092                 (ngsiflow produce --brokers 127.0.0.1:9092)
PostGIS      postgres://postgres@127.0.0.1:5432/ngsiflow
INFO
if [ "${#profiles[@]}" -gt 0 ]; then
  cat <<INFO
Grafana      http://127.0.0.1:3000          (dashboards in folder "ngsiflow"; anonymous viewer, admin/\${GRAFANA_ADMIN_PASSWORD})
Prometheus   http://127.0.0.1:9090          (targets: /targets, alerts: /alerts)
Connect      http://127.0.0.1:8083          (JMX metrics on :9404)
INFO
fi
