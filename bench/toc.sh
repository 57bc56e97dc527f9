#!/usr/bin/env bash
# Benchmark: time to ready from an empty cache, with and without the
# image's table of contents (a SOCI v1 index pushed by `ocidisk index
# push`, read with --soci-v1), for the Debian image and the generated
# ~1 GB scale image (bench/scale.sh's), from a local docker-registry.
# In the same run, per image:
#   ocidisk serve ready, full pass (streams every layer)
#   ocidisk serve --soci-v1 ready (the index, then the zTOCs)
# with the bytes the registry sent before the ready line (its access log),
# and the time `ocidisk index push` took (pull + zTOCs + push, warm cache).
# Usage: bench/toc.sh [RUNS] [SIZE_SCALE]   (defaults 3 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-3}
scale=${2:-5}
bench_prepare
scale_layout "$scale"

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'kill "${serve_pid:-}" 2>/dev/null || true; stop_registry; rm -rf "$work"' EXIT
start_registry "$work"   # with its access log: bytes sent per request
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$layout:bookworm" "docker://$REGISTRY/debian:bookworm"
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$slayout:v1" "docker://$REGISTRY/scale:v1"

# bytes the registry sent in log lines after line $1 (combined log format:
# the byte count follows the status)
sent_since() {
  tail -n +"$(($1 + 1))" "$work/registry.log" |
    awk '$6 ~ /^"(GET|HEAD)$/ && $10 ~ /^[0-9]+$/ {b += $10} END {print b + 0}'
}

# ready REF FLAGS...: "seconds bytes" from start to the ready line, cold
# cache. The line is read from serve's stdout as it is written (a pipe, bash's
# clock: no polling, no fork on the clock).
ready() {
  local r=$1; shift
  rm -rf "$work/cache" "$work/s.sock"; sync
  local mark; mark=$(wc -l < "$work/registry.log")
  local s=$EPOCHREALTIME line fd
  exec {fd}< <(OCIDISK_CACHE_DIR="$work/cache" exec "$bin" serve --read-only "$@" "$r" --socket "$work/s.sock" 2>"$work/serve.err")
  serve_pid=$!
  while IFS= read -r -u "$fd" line && [[ $line != serving* ]]; do :; done
  local e=$EPOCHREALTIME
  kill "$serve_pid" 2>/dev/null || true
  exec {fd}<&-
  if [[ $line != serving* ]]; then cat "$work/serve.err" >&2; echo "serve died" >&2; return 1; fi
  while kill -0 "$serve_pid" 2>/dev/null; do sleep 0.01; done; serve_pid=
  sleep 0.2 # the registry logs a request once its response is done
  echo "$(echo "$e - $s" | bc -l) $(sent_since "$mark")"
}

runs_of() { # REF FLAGS...: "median-seconds median-bytes"
  local t=() b=()
  for _ in $(seq "$runs"); do
    read -r secs bytes < <(ready "$@")
    t+=("$secs"); b+=("$bytes")
  done
  echo "$(printf '%s\n' "${t[@]}" | median) $(printf '%s\n' "${b[@]}" | median)"
}

for img in debian:bookworm scale:v1; do
  ref=$REGISTRY/$img
  s=$(now)
  OCIDISK_CACHE_DIR="$work/pushcache" "$bin" index push "$ref" > "$work/push.out" 2>/dev/null
  push_secs=$(echo "$(now) - $s" | bc -l)
  layers=$(OCIDISK_CACHE_DIR="$work/pushcache" "$bin" inspect --json "$ref" |
    python3 -c "import json,sys; print(sum(l['size'] for l in json.load(sys.stdin)['layers']))")
  read -r full_s full_b < <(runs_of "$ref")
  read -r toc_s toc_b < <(runs_of "$ref" --soci-v1)
  printf '%s: layers %d bytes; index push %.2f s (pull, zTOCs, push)\n' "$img" "$layers" "$push_secs"
  printf '  serve ready, full pass   %8.3f s  %12.0f bytes fetched (%.1f%%)\n' "$full_s" "$full_b" "$(echo "100 * $full_b / $layers" | bc -l)"
  printf '  serve ready, --soci-v1   %8.3f s  %12.0f bytes fetched (%.2f%%)\n' "$toc_s" "$toc_b" "$(echo "100 * $toc_b / $layers" | bc -l)"
  printf '  ratio --soci-v1 / full pass: %.3f (time)\n' "$(echo "$toc_s / $full_s" | bc -l)"
done
