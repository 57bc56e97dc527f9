#!/usr/bin/env bash
# Benchmark: pull the debootstrap Debian image (one ~51 MB gzip layer) from a
# local docker-registry into a cold cache, against what users run today for
# the same step (`skopeo copy docker://… oci:DIR`, which also verifies
# digests), and against the decompression floor (`gzip -dc` of the layer).
# ocidisk pull additionally inflates and hashes the layer for its diff_id.
# Usage: bench/pull.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'stop_registry; rm -rf "$work"' EXIT
push_debian "$work"

time_runs() { # NAME CMD...: run CMD $runs times, cold, print the median seconds
  local name=$1; shift
  local t=()
  for _ in $(seq "$runs"); do
    rm -rf "$work/out" "$work/cache"; sync
    local s; s=$(now); "$@" >/dev/null 2>&1; local e; e=$(now)
    t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | median
}

ocidisk_s=$(time_runs ocidisk env OCIDISK_CACHE_DIR="$work/cache" "$bin" pull "$ref")
skopeo_s=$(time_runs skopeo skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/out:bookworm")
gzip_s=$(time_runs gzip sh -c "gzip -dc '$layout/blobs/sha256/$layer' >/dev/null")
rss_kb=$( { rm -rf "$work/cache"; OCIDISK_CACHE_DIR="$work/cache" /usr/bin/time -f '%M' "$bin" pull "$ref" >/dev/null 2>"$work/time.err"; tail -1 "$work/time.err"; } )

echo "image: debootstrap --variant=minbase bookworm, layer $(stat -c %s "$layout/blobs/sha256/$layer") bytes gzip; $runs cold runs each, medians"
printf '%-40s %8s s\n' "ocidisk pull (verify digest + diff_id)" "$ocidisk_s"
printf '%-40s %8s s\n' "skopeo copy docker:// -> oci:" "$skopeo_s"
printf '%-40s %8s s\n' "gzip -dc layer > /dev/null" "$gzip_s"
printf 'ratio ocidisk/skopeo: %.2f   ratio ocidisk/gzip -dc: %.2f   ocidisk peak RSS: %d MiB\n' \
  "$(echo "$ocidisk_s / $skopeo_s" | bc -l)" "$(echo "$ocidisk_s / $gzip_s" | bc -l)" "$((rss_kb / 1024))"
