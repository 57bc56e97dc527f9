#!/usr/bin/env bash
# Benchmark: qcow2 output of the debootstrap Debian image (one ~51 MB gzip
# layer), layer already in the cache, so the runs time the write itself:
#   ocidisk materialize (raw)                                   the baseline
#   ocidisk materialize --format qcow2 [--compress[=zstd]]      ocidisk's qcow2
#   ocidisk materialize + qemu-img convert -c -O qcow2          what users run today
#     (and with -o compression_type=zstd)
# and the sizes: the raw image's allocated bytes, each qcow2, the layer's gzip.
# Usage: bench/qcow2.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'stop_registry; rm -rf "$work"' EXIT
push_debian "$work"
export OCIDISK_CACHE_DIR="$work/cache"
"$bin" pull "$ref" >/dev/null 2>&1

time_runs() { # CMD...: median seconds of $runs runs, outputs removed before each
  local t=()
  for _ in $(seq "$runs"); do
    rm -f "$work"/out.*; sync
    local s; s=$(now); "$@" >/dev/null 2>&1; local e; e=$(now)
    t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | median
}
mat() { "$bin" materialize "$@"; }
convert() { # EXTRA-OPTS: materialize raw, then qemu-img convert -c
  mat "$ref" "$work/out.img" && qemu-img convert -c -O qcow2 "$@" "$work/out.img" "$work/out.qcow2"
}

raw_s=$(time_runs mat "$ref" "$work/out.img")
plain_s=$(time_runs mat --format qcow2 "$ref" "$work/out.qcow2")
zlib_s=$(time_runs mat --compress "$ref" "$work/out.qcow2")
zstd_s=$(time_runs mat --compress=zstd "$ref" "$work/out.qcow2")
conv_s=$(time_runs convert)
convz_s=$(time_runs convert -o compression_type=zstd)

allocated() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }
mat "$ref" "$work/raw.img" 2>/dev/null; raw_b=$(allocated "$work/raw.img")
mat --compress "$ref" "$work/z.qcow2" 2>/dev/null; zlib_b=$(stat -c %s "$work/z.qcow2")
mat --compress=zstd "$ref" "$work/zs.qcow2" 2>/dev/null; zstd_b=$(stat -c %s "$work/zs.qcow2")
qemu-img convert -c -O qcow2 "$work/raw.img" "$work/q.qcow2"; qz_b=$(stat -c %s "$work/q.qcow2")
gzip_b=$(stat -c %s "$layout/blobs/sha256/$layer")

echo "image: debootstrap --variant=minbase bookworm, layer cached; $runs runs each, medians"
printf '%-62s %8s s\n' "ocidisk materialize (raw)" "$raw_s"
printf '%-62s %8s s\n' "ocidisk materialize --format qcow2 (uncompressed)" "$plain_s"
printf '%-62s %8s s\n' "ocidisk materialize --compress (qcow2, zlib)" "$zlib_s"
printf '%-62s %8s s\n' "ocidisk materialize --compress=zstd (qcow2)" "$zstd_s"
printf '%-62s %8s s\n' "ocidisk materialize + qemu-img convert -c -O qcow2 (zlib)" "$conv_s"
printf '%-62s %8s s\n' "ocidisk materialize + qemu-img convert -c (zstd)" "$convz_s"
printf 'ratio --compress/raw: %.2f   --compress/(materialize + qemu-img convert -c): %.2f\n' \
  "$(echo "$zlib_s / $raw_s" | bc -l)" "$(echo "$zlib_s / $conv_s" | bc -l)"
printf 'ratio --compress=zstd/raw: %.2f   zstd/(materialize + qemu-img convert -c zstd): %.2f\n' \
  "$(echo "$zstd_s / $raw_s" | bc -l)" "$(echo "$zstd_s / $convz_s" | bc -l)"
printf 'sizes: raw allocated %d   qcow2 zlib %d (%.2fx)   qcow2 zstd %d (%.2fx)   qemu-img convert -c %d (%.2fx)   layer gzip %d (%.2fx)\n' \
  "$raw_b" "$zlib_b" "$(echo "$zlib_b / $raw_b" | bc -l)" "$zstd_b" "$(echo "$zstd_b / $raw_b" | bc -l)" \
  "$qz_b" "$(echo "$qz_b / $raw_b" | bc -l)" "$gzip_b" "$(echo "$gzip_b / $raw_b" | bc -l)"
