#!/usr/bin/env bash
# Throughput benchmark through the real stack (Apache Kafka, PostGIS, release worker):
#   scripts/bench.sh [N]     (default N = 100000 notifications per flow)
# Produces N sample notifications (1000 entities per type) to each of raw_historic, raw_lastdata
# and raw_mutable while the worker is stopped, then starts the worker and measures, from its
# first handled message to the last, notifications/s and rows/s (from its own metrics). Uses its
# own broker (port 19093), admin port 18001 and database ngsiflow_bench; writes
# target/bench/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
N="${1:-100000}"
DB=ngsiflow_bench
BROKER=127.0.0.1:19093
ADMIN=127.0.0.1:18001
OUT=target/bench
mkdir -p "$OUT"

bash scripts/install-deps.sh
ensure_postgres
psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
ensure_database "$DB"
cargo build --release --locked -q
BIN="$PWD/target/release/ngsiflow"

rm -rf "$OUT/kafka"
bash scripts/kafka.sh start --port "${BROKER##*:}" --dir "$OUT/kafka" --partitions 3
WORKER_PID=""
cleanup() { [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null; bash scripts/kafka.sh stop --dir "$OUT/kafka"; true; }
trap cleanup EXIT

log "producing $N notifications to each raw topic"
"$BIN" produce --brokers "$BROKER" --count "$N" --entities 1000 2>&1 | tail -1

metric_sum() { # name filter
  curl -s "http://$ADMIN/metrics" | awk -v m="$1" -v f="$2" 'index($0, m "{") == 1 && index($0, f) { s += $NF } END { printf "%d\n", s }'
}
"$BIN" run --brokers "$BROKER" --pg-url "postgres://postgres@127.0.0.1:5432/$DB" --admin-addr "$ADMIN" \
  --log-level warn >"$OUT/worker.log" 2>&1 &
WORKER_PID=$!
TOTAL=$((3 * N))
t0=""; c0=0; peak_rss=0
while :; do
  c=$(metric_sum messages_processed_total "" 2>/dev/null) || c=0
  now=$(date +%s.%N)
  if [ -z "$t0" ] && [ "${c:-0}" -gt 0 ]; then t0=$now; c0=$c; fi
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$WORKER_PID/status" 2>/dev/null || echo 0)
  [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
  [ "${c:-0}" -ge "$TOTAL" ] && break
  kill -0 "$WORKER_PID" || { cat "$OUT/worker.log"; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
written=$(metric_sum ngsiflow_records_total 'outcome="written"')
stale=$(metric_sum ngsiflow_records_total 'outcome="stale_ignored"')
errors=$(metric_sum ngsiflow_records_total 'outcome="error_logged"')
cpu=$(curl -s "http://$ADMIN/metrics" | awk '/^process_cpu_seconds_total/ {print $2}')
secs=$(echo "$t1 - $t0" | bc -l)
msgs=$((TOTAL - c0))
report=$(cat <<REPORT
# ngsiflow throughput ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)

command: scripts/bench.sh $N
notifications: $N per flow x 3 flows = $TOTAL (one entity each, 1000 entities per type)
measured window: $msgs notifications in $(printf %.2f "$secs") s (from the first handled message)
throughput: $(printf %.0f "$(echo "$msgs / $secs" | bc -l)") notifications/s
rows written: $written ($(printf %.0f "$(echo "$written / $secs" | bc -l)") rows/s), stale ignored: $stale, errors: $errors
peak worker RSS: $((peak_rss / 1024)) MiB, worker CPU: $(printf %.1f "$cpu") s (the rest of the 2 cores went to PostgreSQL and the broker)
REPORT
)
echo "$report" | tee "$OUT/report.md"
print_row_counts "postgres://postgres@127.0.0.1:5432/$DB"
