#!/usr/bin/env bash
# Installs what ngsiflow's local stack and tests need, idempotently, each component cached by
# the version scripts/versions.env names (under ~/.cache/ngsiflow, or $NGSIFLOW_CACHE_DIR):
#   - PostgreSQL server + PostGIS (Debian); creates and starts cluster <major>/main when absent
#     and lets local TCP connections in without a password (trust on 127.0.0.1 and ::1)
#   - Prometheus + promtool and postgres-exporter (Debian); libssl-dev and pkg-config, with which
#     librdkafka is built for Kafka TLS and SASL
#   - Apache Kafka (KRaft broker) and the Kafka Connect runtime with connect-json, connect-file
#     and connect-transforms, Debezium's JDBC sink connector as a Connect plugin, and the
#     Prometheus JMX exporter java agent: resolved from Maven Central by mvn from
#     scripts/maven/pom.xml
#   - kafka_exporter with `go install` at the pinned version (see the note at that step)
# Safe to run again: every step checks first. Prints nothing on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/lib.sh"
say() { echo "[install-deps] $*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
need_apt=()
# libssl-dev + pkg-config: librdkafka is built with OpenSSL (Kafka TLS and SASL SCRAM).
for pkg in "postgresql-$POSTGRES_MAJOR" "postgresql-$POSTGRES_MAJOR-postgis-$POSTGIS_MAJOR" \
           prometheus prometheus-postgres-exporter libssl-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the Debian prometheus package from pulling in extra exporters.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's postinst scripts may start the daemons on their default ports; our stack runs its own
  # instances on the ports it chooses.
  for svc in prometheus prometheus-postgres-exporter; do
    pkill -f "^/usr/bin/$svc" 2>/dev/null || true
  done
fi

# --- the PostgreSQL cluster ------------------------------------------------------------------
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1 "/" $2}' | grep -qx "$POSTGRES_MAJOR/main"; then
  say "creating PostgreSQL cluster $POSTGRES_MAJOR/main"
  pg_createcluster "$POSTGRES_MAJOR" main >/dev/null
fi
HBA="/etc/postgresql/$POSTGRES_MAJOR/main/pg_hba.conf"
if ! grep -q "ngsiflow: local trust" "$HBA"; then
  # Local development and tests connect as postgres over TCP without a password; the rules go
  # first so they win over Debian's scram-sha-256 lines. Production clusters are not touched by
  # this script.
  say "allowing local TCP connections without a password in $HBA"
  { echo "# ngsiflow: local trust for development and tests (scripts/install-deps.sh)"
    echo "host all all 127.0.0.1/32 trust"
    echo "host all all ::1/128 trust"
    cat "$HBA"; } >"$HBA.new"
  mv "$HBA.new" "$HBA"; chown postgres:postgres "$HBA"
  pg_ctlcluster --skip-systemctl-redirect "$POSTGRES_MAJOR" main reload 2>/dev/null || true
fi
ensure_postgres

# --- JVM components from Maven Central -------------------------------------------------------
mvn_copy() { # profile dest
  local profile="$1" dest="$2"
  local tmp="$dest.partial"
  rm -rf "$tmp"; mkdir -p "$(dirname "$dest")"
  mvn -q -B -Dstyle.color=never -s "$ROOT/scripts/maven/settings.xml" -f "$ROOT/scripts/maven/pom.xml" -P "$profile" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" -Dslf4j.version="$SLF4J_VERSION" \
    -Ddebezium.version="$DEBEZIUM_VERSION" -Dhibernate.version="$HIBERNATE_VERSION" -Djmx.exporter.version="$JMX_EXPORTER_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp.log" 2>&1 \
    || { cat "$tmp.log" >&2; return 1; }
  rm -f "$tmp.log"
  rm -rf "$dest"; mv "$tmp" "$dest"
}
if [ ! -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  say "resolving Apache Kafka $KAFKA_VERSION and Kafka Connect from Maven Central"
  mvn_copy kafka "$KAFKA_LIBS"
fi
if [ ! -f "$JMX_AGENT_JAR" ]; then
  say "resolving the Prometheus JMX exporter agent $JMX_EXPORTER_VERSION"
  mvn_copy jmx-agent "$(dirname "$JMX_AGENT_JAR")/jars"
  mv "$(dirname "$JMX_AGENT_JAR")/jars/jmx_prometheus_javaagent-$JMX_EXPORTER_VERSION.jar" "$JMX_AGENT_JAR"
  rm -rf "$(dirname "$JMX_AGENT_JAR")/jars"
fi
if [ ! -f "$CONNECT_PLUGIN_DIR/debezium-connector-jdbc/debezium-connector-jdbc-$DEBEZIUM_VERSION.jar" ]; then
  say "resolving Debezium's JDBC sink connector $DEBEZIUM_VERSION"
  mvn_copy jdbc-sink "$CONNECT_PLUGIN_DIR/debezium-connector-jdbc"
fi

# --- kafka_exporter --------------------------------------------------------------------------
# The Go module proxy these machines reach answers 403 ("not available") for every version of
# github.com/danielqsj/kafka_exporter, so this step cannot succeed here; it is attempted so that a
# machine whose proxy serves the module gets the exporter, and it never fails the install.
# KAFKA_EXPORTER_BIN may also point at a binary installed another way.
if [ ! -x "$KAFKA_EXPORTER_BIN" ]; then
  if GOBIN="$(dirname "$KAFKA_EXPORTER_BIN")" GOFLAGS=-mod=mod \
       go install "github.com/danielqsj/kafka_exporter@$KAFKA_EXPORTER_VERSION" >/dev/null 2>&1; then
    say "kafka_exporter $KAFKA_EXPORTER_VERSION installed"
  else
    say "kafka_exporter $KAFKA_EXPORTER_VERSION is not served by the Go module proxy; the native stack runs without it"
  fi
fi
