#!/usr/bin/env bash
# Installs what ngsiflow's local stack and tests need, idempotently:
#   - PostGIS for the system PostgreSQL 15 (Debian postgresql-15-postgis-3)
#   - Prometheus + promtool and postgres-exporter (Debian)
#   - the tansu Kafka-protocol broker (crates.io), built once and cached by version
# Safe to run again: every step checks first.
set -euo pipefail

TANSU_VERSION="${TANSU_VERSION:-0.6.0}"
CACHE_DIR="${NGSIFLOW_CACHE_DIR:-$HOME/.cache/ngsiflow}"
TANSU_ROOT="$CACHE_DIR/tansu-$TANSU_VERSION"

log() { echo "[install-deps] $*" >&2; }

need_apt=()
dpkg -s postgresql-15-postgis-3 >/dev/null 2>&1 || need_apt+=(postgresql-15-postgis-3)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-postgres-exporter >/dev/null 2>&1 || need_apt+=(prometheus-postgres-exporter)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the Debian prometheus package from pulling in extra exporters.
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's postinst scripts may start the daemons on their default ports; our stack runs its own
  # instances on the ports it chooses, so stop the packaged services where they are running.
  for svc in prometheus prometheus-postgres-exporter; do
    pkill -f "^/usr/bin/$svc" 2>/dev/null || true
  done
fi

# The broker: tansu, built with the in-memory storage engine (see shared NOTES: needs dynostore).
if [ ! -x "$TANSU_ROOT/bin/tansu" ]; then
  log "building tansu $TANSU_VERSION into $TANSU_ROOT (about 10 minutes on 2 cores, once)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$TANSU_ROOT" >&2
fi
log "tansu at $TANSU_ROOT/bin/tansu"
echo "$TANSU_ROOT/bin/tansu"
