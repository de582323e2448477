#!/usr/bin/env bash
# Fault injection, long variants, on the real Apache Kafka broker and PostGIS (release build):
#   scripts/faults.sh
# Runs tests/faults.rs with NGSIFLOW_FAULTS_FULL=1 (100 000 notifications × 3 flows over 36
# tables and 3 partitions with 20 SIGKILLs, a 30 s table lock, a 50 000-message bad-input flood,
# a hung database, broker restart and freeze, scale-out, SIGTERM mid-drain) and
# tests/outage.rs with a 30 s PostgreSQL outage under load, then prints each scenario's figures
# and writes them to target/faults/report.md. CI runs the short variants via scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/install-deps.sh
ensure_postgres
OUT=target/faults
mkdir -p "$OUT"
export NGSIFLOW_FAULTS_FULL=1 NGSIFLOW_OUTAGE_SECS=30
cargo test --release --locked --test faults --test outage -- --test-threads=1 --nocapture 2>&1 \
  | tee "$OUT/run.log" \
  | grep -E '(crash|hung database|broker faults|scale-out|sigterm|table lock|bad-input flood|database outage): |test result' || true
{
  echo "# Fault injection — $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD)"
  echo
  grep -oE '(crash|hung database|broker faults|scale-out|sigterm|table lock|bad-input flood|database outage): .*' "$OUT/run.log" | sed 's/^/- /' || true
} >"$OUT/report.md"
grep -q 'test result: ok' "$OUT/run.log" && ! grep -q 'FAILED' "$OUT/run.log"
