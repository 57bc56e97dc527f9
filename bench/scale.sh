#!/usr/bin/env bash
# Benchmark: the generated scale image (tests/common/scale.rs: 3 gzip
# layers, ~108,000 entries, a 20,000-entry directory, whiteouts; size
# scale 5 gives about 1 GB of file data) from a local docker-registry.
# In the same run:
#   ocidisk materialize, cold cache            vs skopeo copy + umoci unpack + mke2fs -t ext4 -d
#   ocidisk serve ready, cold cache            vs gzip -dc of the layers
# plus ocidisk's peak RSS and e2fsck of its output.
# The layout is generated once and cached in /var/cache/ocidisk-fixtures
# ($OCIDISK_FIXTURES).
# Usage: bench/scale.sh [RUNS] [SIZE_SCALE]   (defaults 3 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-3}
scale=${2:-5}
bench_prepare
scale_layout "$scale"

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'kill "${serve_pid:-}" 2>/dev/null || true; stop_registry; rm -rf "$work"' EXIT
start_registry "$work" quiet
ref=$REGISTRY/scale:v1
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$slayout:v1" "docker://$ref"

OCIDISK_CACHE_DIR="$work/sizecache" "$bin" materialize "$ref" "$work/size.img" 2>/dev/null
size_bytes=$(stat -c %s "$work/size.img"); rm -rf "$work/size.img" "$work/sizecache"

cold() { rm -rf "$work/cache" "$work/out" "$work/bundle" "$work/img" "$work/ocidisk.img"; sync; }
pipeline() {
  skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/out:v1" &&
  umoci unpack --image "$work/out:v1" "$work/bundle" &&
  mke2fs -q -t ext4 -d "$work/bundle/rootfs" "$work/img" "$((size_bytes / 1024))k"
}
serve_ready() { # seconds from start to the ready line, cold cache
  rm -f "$work/s.sock"
  local s; s=$(now)
  OCIDISK_CACHE_DIR="$work/cache" "$bin" serve --read-only "$ref" --socket "$work/s.sock" > "$work/serve.out" 2>/dev/null &
  serve_pid=$!
  while ! grep -q '^serving' "$work/serve.out" 2>/dev/null; do
    kill -0 "$serve_pid" 2>/dev/null || { echo "serve died" >&2; return 1; }
    sleep 0.01
  done
  local e; e=$(now)
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=
  echo "$e - $s" | bc -l
}
serve_runs() {
  local t=()
  for _ in $(seq "$runs"); do cold; t+=("$(serve_ready)"); done
  printf '%s\n' "${t[@]}" | median
}

layers=$(python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(' '.join(l['digest'].split(':')[1] for l in m['layers']))" \
  "$slayout/blobs/sha256/$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['manifests'][0]['digest'].split(':')[1])" "$slayout/index.json")")
gz_files=$(for l in $layers; do printf '%s ' "$slayout/blobs/sha256/$l"; done)
compressed=$(du -cb $gz_files | tail -1 | cut -f1)

ocidisk_s=$(time_runs env OCIDISK_CACHE_DIR="$work/cache" "$bin" materialize "$ref" "$work/ocidisk.img")
serve_s=$(serve_runs)
gzip_s=$(time_runs sh -c "for f in $gz_files; do gzip -dc \$f; done >/dev/null")
pipeline_s=$(time_runs pipeline)
cold
OCIDISK_CACHE_DIR="$work/cache" /usr/bin/time -f '%M' "$bin" materialize "$ref" "$work/ocidisk.img" >/dev/null 2>"$work/time.err"
rss_kb=$(tail -1 "$work/time.err")
if e2fsck -fn "$work/ocidisk.img" >"$work/fsck.log" 2>&1; then fsck=clean; else fsck="NOT clean (see below)"; cat "$work/fsck.log"; fi

echo "image: tests/common/scale.rs, size scale $scale: $(echo $layers | wc -w) gzip layers, $compressed bytes compressed; ext4 image $size_bytes bytes; $runs runs each, medians"
printf '%-58s %8s s\n' "ocidisk materialize, cold cache" "$ocidisk_s"
printf '%-58s %8s s\n' "skopeo copy + umoci unpack + mke2fs -t ext4 -d" "$pipeline_s"
printf '%-58s %8s s\n' "ocidisk serve, cold cache, to ready" "$serve_s"
printf '%-58s %8s s\n' "gzip -dc of the layers > /dev/null" "$gzip_s"
printf '%-58s %8s KiB\n' "ocidisk materialize peak RSS (cold)" "$rss_kb"
printf '%-58s %8s\n' "e2fsck -fn of ocidisk's image" "$fsck"
printf 'ratios: materialize/pipeline %.2f (target <= 0.25); serve ready/gzip -dc %.2f (target <= 1.3)\n' \
  "$(echo "$ocidisk_s / $pipeline_s" | bc -l)" "$(echo "$serve_s / $gzip_s" | bc -l)"
