#!/usr/bin/env bash
# The test command: install what the tests need (if missing), check format
# and lints, then run every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A clean CI build gains nothing from incremental caches (2 GB of them).
export CARGO_INCREMENTAL=0
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
# Each fuzz target briefly (the corpora are replayed above by cargo test).
bash scripts/fuzz-smoke.sh 20
