#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), makes sure PostgreSQL runs, then
# runs every unit and integration test. Integration tests start their own tansu brokers and
# worker processes on free ports and create their own databases.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/install-deps.sh >/dev/null
ensure_postgres
# Test binaries run one after another; tests inside a binary run two at a time (2 cores).
cargo test --lib --bins --tests --locked -- --test-threads=2 "$@"
