#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent, cached by version), makes sure
# PostgreSQL runs, then runs every unit and integration test. Integration tests start their own
# Apache Kafka brokers (scripts/kafka.sh), Kafka Connect workers, Prometheus and worker processes
# on free ports and create their own databases.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/install-deps.sh
ensure_postgres
# A fresh clone (CI) gains nothing from incremental compilation's caches, which would be the
# largest part of target/debug.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
# Test binaries run one after another; tests inside a binary run two at a time (2 cores).
cargo test --lib --bins --tests --locked -- --test-threads=2 "$@"
# Fuzzing: the crashes found so far are replayed, then every target of fuzz/ runs for
# NGSIFLOW_FUZZ_SECONDS (default 60) on a copy of its corpus (scripts/fuzz.sh; nightly toolchain,
# cargo-fuzz installed from crates.io when missing).
bash scripts/fuzz.sh "${NGSIFLOW_FUZZ_SECONDS:-60}"
