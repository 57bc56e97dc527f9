#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly (SECONDS each, default 20) from a
# copy of its committed corpus, so CI catches a target that no longer
# builds or an input the fuzzer breaks quickly. Installs cargo-fuzz if
# missing; needs the nightly toolchain. A crash fails the run and leaves
# the input under fuzz/artifacts/TARGET/.
# Usage: scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
cd fuzz
# cargo-fuzz keeps line tables; stripped, each target is 9 MB instead of
# 133 MB (a crash still leaves its input under fuzz/artifacts/).
export CARGO_PROFILE_RELEASE_STRIP=debuginfo
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in $targets; do
  mkdir -p "$work/$t"
  cp -r "corpus/$t/." "$work/$t/" 2>/dev/null || true
  if ! cargo +nightly fuzz run "$t" "$work/$t" -- -max_total_time="$secs" -max_len=65536 -timeout=20 \
      > "$work/$t.log" 2>&1; then
    tail -60 "$work/$t.log" >&2
    echo "fuzz-smoke: $t failed" >&2
    exit 1
  fi
  echo "fuzz-smoke: $t $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$work/$t.log")"
done
