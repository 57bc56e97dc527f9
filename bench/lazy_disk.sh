#!/usr/bin/env bash
# Benchmark: the lazy disk over the debootstrap Debian image in a local
# docker-registry. Measures, in one run: time to "ready to serve" cold (no
# cache: every layer streamed once through the indexer) and warm (indexes
# cached); registry bytes to read a typical set of boot files, as a fraction
# of the compressed image; random 4 KiB reads from the warm memory cache.
# The decompression floor, `gzip -dc` of the layer, is measured alongside.
# Usage: bench/lazy_disk.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare
cargo build --release --quiet --example lazy_bench

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'umount "$work/mnt" 2>/dev/null || true; stop_registry; rm -rf "$work"' EXIT
push_debian "$work"
layer_bytes=$(stat -c %s "$layout/blobs/sha256/$layer")

# Boot files: the shell, coreutils and util-linux a minimal boot runs, their
# libraries, and the config files they read.
OCIDISK_CACHE_DIR="$work/mcache" "$bin" materialize --read-only "oci:$layout:bookworm" "$work/ref.img" 2>/dev/null
files="/usr/bin/dash /usr/bin/bash /usr/bin/ls /usr/bin/cat /usr/bin/mount /usr/bin/mkdir /usr/bin/sleep
/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 /usr/lib/x86_64-linux-gnu/libc.so.6
/usr/lib/x86_64-linux-gnu/libtinfo.so.6 /usr/lib/x86_64-linux-gnu/libselinux.so.1
/usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 /usr/lib/x86_64-linux-gnu/libmount.so.1
/usr/lib/x86_64-linux-gnu/libblkid.so.1 /etc/passwd /etc/group /etc/nsswitch.conf /usr/lib/os-release"
# Library names are symlinks: resolve them in a loop mount of the same image.
mkdir "$work/mnt" && mount -o loop,ro "$work/ref.img" "$work/mnt"
real=$(for f in $files; do p=$(readlink -f "$work/mnt$f"); echo "${p#"$work/mnt"}"; done)
boot_file_bytes=$(for f in $real; do stat -c %s "$work/mnt$f"; done | paste -sd+ | bc)
umount "$work/mnt"
for f in $real; do debugfs -R "blocks $f" "$work/ref.img" 2>/dev/null; done | tr ' ' '\n' | grep -v '^$' > "$work/blocks"

out=$(target/release/examples/lazy_bench "$ref" "$work/cache" "$work/blocks" "$runs")
echo "$out" > "$work/out"
get() { awk -v k="$1" '$1==k{print $2}' "$work/out"; }
gz_t=()
for _ in $(seq "$runs"); do s=$(date +%s.%N); gzip -dc "$layout/blobs/sha256/$layer" >/dev/null; e=$(date +%s.%N); gz_t+=("$(echo "$e - $s" | bc -l)"); done
gzip_s=$(printf '%s\n' "${gz_t[@]}" | median)

echo "image: debootstrap --variant=minbase bookworm, one $layer_bytes-byte gzip layer; $runs runs, medians"
printf '%-52s %s s\n' "ready to serve, cold (index every layer once)" "$(get cold_ready_s)"
printf '%-52s %s s\n' "ready to serve, warm (indexes cached)" "$(get warm_ready_s)"
printf '%-52s %s s\n' "gzip -dc layer > /dev/null" "$gzip_s"
printf '%-52s %s files, %s bytes, %s blocks\n' "boot file set" "$(echo $files | wc -w)" "$boot_file_bytes" "$(get boot_blocks)"
printf '%-52s %s bytes in %s spans = %.1f%% of the compressed image\n' "fetched from the registry to read them" \
  "$(get boot_bytes)" "$(get boot_spans)" "$(echo "100 * $(get boot_bytes) / $layer_bytes" | bc -l)"
printf '%-52s %s IOPS (%s MiB/s)\n' "random 4 KiB reads, warm memory cache, 1 thread" "$(get random_4k_iops)" "$(get random_4k_mib_s)"
printf 'ratio cold ready/gzip -dc: %.2f\n' "$(echo "$(get cold_ready_s) / $gzip_s" | bc -l)"
