#!/usr/bin/env bash
# Benchmark: reads of the FUSE-exported disk (ocidisk mount, read-only, warm:
# every span already in ocidisk's memory cache) against the same reads of
# the materialized image on local disk, in one run. The kernel page cache is
# dropped before every run, so both go through their storage path.
#   sequential: dd bs=1M of the whole file
#   random:     4 KiB preads at random aligned offsets (python3)
# Usage: bench/mount.sh [RUNS]   (default 5). Needs root. Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare
work=$(mktemp -d /var/tmp/ocidisk-bench.XXXXXX)
mount_pid=
trap '[ -n "$mount_pid" ] && kill $mount_pid 2>/dev/null; wait 2>/dev/null || true; umount "$work/fuse.img" 2>/dev/null || true; rm -rf "$work"' EXIT
export OCIDISK_CACHE_DIR=$work/cache

"$bin" materialize --read-only "oci:$layout:bookworm" "$work/local.img" 2>/dev/null
touch "$work/fuse.img"
"$bin" mount --read-only --cache-mem 1G "oci:$layout:bookworm" "$work/fuse.img" > "$work/mount.log" 2>&1 &
mount_pid=$!
for _ in $(seq 100); do grep -q "^mounted" "$work/mount.log" && break; sleep 0.1; done
cat "$work/fuse.img" > /dev/null   # warm ocidisk's cache
size=$(stat -c %s "$work/local.img")

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
seq_mib_s() { local t=(); for _ in $(seq "$runs"); do drop; s=$(now); dd if="$1" of=/dev/null bs=1M status=none; e=$(now); t+=("$(echo "$size / 1048576 / ($e - $s)" | bc -l)"); done; printf '%s\n' "${t[@]}" | median; }
rand_iops() {
  local t=()
  for _ in $(seq "$runs"); do
    drop
    t+=("$(python3 - "$1" <<'PY'
import os, random, sys, time
f = os.open(sys.argv[1], os.O_RDONLY)
blocks = os.fstat(f).st_size // 4096
rng = random.Random(42)
offs = [rng.randrange(blocks) * 4096 for _ in range(20000)]
t = time.perf_counter()
for o in offs:
    os.pread(f, 4096, o)
print(len(offs) / (time.perf_counter() - t))
PY
)")
  done
  printf '%s\n' "${t[@]}" | median
}

lseq=$(seq_mib_s "$work/local.img"); fseq=$(seq_mib_s "$work/fuse.img")
lrand=$(rand_iops "$work/local.img"); frand=$(rand_iops "$work/fuse.img")
echo "image: debootstrap minbase bookworm, read-only ext4, $size bytes; $runs runs each, medians, page cache dropped before each"
printf '%-44s %10s MiB/s %12s 4K IOPS\n' "local file (materialized image)" "$lseq" "$lrand"
printf '%-44s %10s MiB/s %12s 4K IOPS\n' "FUSE file (ocidisk mount, warm)" "$fseq" "$frand"
printf 'ratio FUSE/local: sequential %.2f, random 4K %.2f\n' "$(echo "$fseq / $lseq" | bc -l)" "$(echo "$frand / $lrand" | bc -l)"
