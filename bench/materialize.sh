#!/usr/bin/env bash
# Benchmark: materialize the debootstrap Debian image (one ~51 MB gzip layer,
# 121 MB tar, 6,658 entries) from a local docker-registry into an ext4 and an
# ext3 and an XFS image, against what users do today, in the same run:
#   skopeo copy docker://… oci:DIR + umoci unpack + mke2fs -t ext4|ext3 -d ROOTFS IMG SIZE
#   (XFS: the same, then bench/protofile.py + mkfs.xfs -p PROTO IMG)
# and against the decompression floor, `gzip -dc` of the layer, beside the
# in-process floor (bench/floor.rs: read + sha256 + zlib-rs inflate + sha256
# on one thread, nothing else).
# ocidisk starts from an empty cache each run (download, verify, index, write).
# Usage: bench/materialize.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare
cargo build --release --quiet --example floor

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'stop_registry; rm -rf "$work"' EXIT
push_debian "$work"

# The same size for both: what ocidisk chooses for a writable image.
OCIDISK_CACHE_DIR="$work/sizecache" "$bin" materialize "$ref" "$work/size.img" 2>/dev/null
size_bytes=$(stat -c %s "$work/size.img"); rm -rf "$work/size.img" "$work/sizecache"

cold() { rm -rf "$work/cache" "$work/out" "$work/bundle" "$work/img" "$work/ocidisk.img"; sync; }
pipeline() { # FS
  skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$work/out:bookworm" &&
  umoci unpack --image "$work/out:bookworm" "$work/bundle" &&
  if [ "$1" = xfs ]; then
    /usr/bin/python3 bench/protofile.py "$work/bundle/rootfs" > "$work/proto" &&
    truncate -s "$size_bytes" "$work/img" &&
    mkfs.xfs -q -f -m crc=1,finobt=0,rmapbt=0,reflink=0,inobtcount=0,bigtime=1 \
      -i sparse=0 -n ftype=1 -p "$work/proto" "$work/img"
  else
    mke2fs -q -t "$1" -d "$work/bundle/rootfs" "$work/img" "$((size_bytes / 1024))k"
  fi
}
warm_runs() { # FS: median seconds of materialize with the layer already cached
  local t=(); cold; OCIDISK_CACHE_DIR="$work/cache" "$bin" pull "$ref" >/dev/null 2>&1
  for _ in $(seq "$runs"); do
    rm -f "$work/ocidisk.img"; local s; s=$(now)
    OCIDISK_CACHE_DIR="$work/cache" "$bin" materialize --fs "$1" "$ref" "$work/ocidisk.img" >/dev/null 2>&1
    local e; e=$(now); t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | median
}

ocidisk_s=$(time_runs env OCIDISK_CACHE_DIR="$work/cache" "$bin" materialize "$ref" "$work/ocidisk.img")
warm_s=$(warm_runs ext4)
ext3_s=$(time_runs env OCIDISK_CACHE_DIR="$work/cache" "$bin" materialize --fs ext3 "$ref" "$work/ocidisk.img")
ext3_warm_s=$(warm_runs ext3)
xfs_s=$(time_runs env OCIDISK_CACHE_DIR="$work/cache" "$bin" materialize --fs xfs "$ref" "$work/ocidisk.img")
xfs_warm_s=$(warm_runs xfs)
pipeline_s=$(time_runs pipeline ext4)
pipeline3_s=$(time_runs pipeline ext3)
pipelinex_s=$(time_runs pipeline xfs)
gzip_s=$(time_runs sh -c "gzip -dc '$layout/blobs/sha256/$layer' >/dev/null")
floor_s=$(target/release/examples/floor "$layout/blobs/sha256/$layer" "$runs")
cold
OCIDISK_CACHE_DIR="$work/cache" /usr/bin/time -f '%M' "$bin" materialize "$ref" "$work/ocidisk.img" >/dev/null 2>"$work/time.err"
rss_kb=$(tail -1 "$work/time.err")

echo "image: debootstrap --variant=minbase bookworm, layer $(stat -c %s "$layout/blobs/sha256/$layer") bytes gzip; ext4 image $size_bytes bytes; $runs runs each, medians"
printf '%-58s %8s s\n' "ocidisk materialize, cold cache (pull + index + write)" "$ocidisk_s"
printf '%-58s %8s s\n' "ocidisk materialize, layer already cached" "$warm_s"
printf '%-58s %8s s\n' "ocidisk materialize --fs ext3, cold cache" "$ext3_s"
printf '%-58s %8s s\n' "ocidisk materialize --fs ext3, layer already cached" "$ext3_warm_s"
printf '%-58s %8s s\n' "ocidisk materialize --fs xfs, cold cache" "$xfs_s"
printf '%-58s %8s s\n' "ocidisk materialize --fs xfs, layer already cached" "$xfs_warm_s"
printf '%-58s %8s s\n' "skopeo copy + umoci unpack + mke2fs -t ext4 -d" "$pipeline_s"
printf '%-58s %8s s\n' "skopeo copy + umoci unpack + mke2fs -t ext3 -d" "$pipeline3_s"
printf '%-58s %8s s\n' "skopeo + umoci + protofile + mkfs.xfs -p" "$pipelinex_s"
printf '%-58s %8s s\n' "gzip -dc layer > /dev/null" "$gzip_s"
printf '%-58s %8s s\n' "in-process floor: sha256 + inflate + sha256 (bench/floor.rs)" "$floor_s"
printf 'ratio cold/pipeline: %.2f   cold/gzip -dc: %.2f   cold/floor: %.2f   warm/gzip -dc: %.2f   peak RSS (cold): %d MiB\n' \
  "$(echo "$ocidisk_s / $pipeline_s" | bc -l)" "$(echo "$ocidisk_s / $gzip_s" | bc -l)" \
  "$(echo "$ocidisk_s / $floor_s" | bc -l)" "$(echo "$warm_s / $gzip_s" | bc -l)" "$((rss_kb / 1024))"
printf 'ext3: ratio ext3/ext4 cold: %.2f   warm: %.2f   ext3 cold/pipeline (mke2fs -t ext3): %.2f\n' \
  "$(echo "$ext3_s / $ocidisk_s" | bc -l)" "$(echo "$ext3_warm_s / $warm_s" | bc -l)" \
  "$(echo "$ext3_s / $pipeline3_s" | bc -l)"
printf 'xfs: ratio xfs/ext4 cold: %.2f   warm: %.2f   xfs cold/pipeline (mkfs.xfs -p): %.2f\n' \
  "$(echo "$xfs_s / $ocidisk_s" | bc -l)" "$(echo "$xfs_warm_s / $warm_s" | bc -l)" \
  "$(echo "$xfs_s / $pipelinex_s" | bc -l)"
