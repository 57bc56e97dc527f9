#!/usr/bin/env bash
# Benchmark: `ocidisk serve` (read-only, lazy from a local registry) against
# `qemu-storage-daemon --export type=vhost-user-blk` serving the materialized
# raw image of the same image, in one run, same clients:
#   host:  libblkio (bench/serve_bench.rs), 4 KiB random reads at QD1 and
#          QD32, 1 MiB sequential reads at QD1, both warm (device read once)
#   guest: QEMU (TCG) + fio in the guest, 1 MiB sequential and 4 KiB random
#          direct reads of /dev/vda, warm
#   boot:  QEMU start -> init's marker after running dpkg and ls from the
#          image, from a cold lazy disk (empty cache, server just started)
#          vs qemu-storage-daemon on the local raw file
# Usage: bench/serve.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare
cargo build --release --quiet --example serve_bench
load=$PWD/target/release/examples/serve_bench
kit=$(bash scripts/vm-kit.sh)
work=$(mktemp -d /var/tmp/ocidisk-bench.XXXXXX)
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_servers
  stop_registry
  rm -rf "$work"
}
trap cleanup EXIT
push_debian "$work"
export OCIDISK_CACHE_DIR=$work/cache
"$bin" materialize --read-only "$ref" "$work/raw.img" 2>/dev/null

# serve_ocidisk SOCK [EXTRA...]: start ocidisk serve, wait for its ready line.
serve_ocidisk() {
  local sock=$1; shift
  "$bin" serve --read-only "$ref" --socket "$sock" "$@" > "$sock.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 600); do grep -q "^serving" "$sock.log" && return 0; sleep 0.05; done
  echo "ocidisk serve did not start:" >&2; cat "$sock.log" >&2; return 1
}
serve_qsd() {
  local sock=$1
  qemu-storage-daemon \
    --blockdev "driver=file,filename=$work/raw.img,node-name=file0,read-only=on" \
    --blockdev "driver=raw,file=file0,node-name=raw0,read-only=on" \
    --export "type=vhost-user-blk,id=e0,node-name=raw0,addr.type=unix,addr.path=$sock,writable=off,num-queues=1" \
    > "$sock.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
  echo "qemu-storage-daemon did not start:" >&2; cat "$sock.log" >&2; return 1
}

serve_ocidisk "$work/o.sock" --cache-mem 1G
serve_qsd "$work/q.sock"
"$load" "$work/o.sock" warm 0 0 0 > /dev/null
"$load" "$work/q.sock" warm 0 0 0 > /dev/null

declare -A r
host() { # NAME SOCK MODE BS QD FIELD(1=IOPS,2=MiB/s)
  local t=()
  for _ in $(seq "$runs"); do t+=("$("$load" "$2" "$3" "$4" "$5" 3 | cut -d' ' -f"$6")"); done
  r[$1]=$(printf '%s\n' "${t[@]}" | median)
}
for s in o q; do
  host "$s.qd1" "$work/$s.sock" randread 4096 1 1
  host "$s.qd32" "$work/$s.sock" randread 4096 32 1
  host "$s.seq" "$work/$s.sock" seqread 1048576 1 2
done

for s in o q; do
  seq=(); rnd=()
  for _ in $(seq "$runs"); do
    out=$(vm_run "$work/$s.sock" bench initramfs-fio.cpio)
    seq+=("$(echo "$out" | awk -F'[ ;]' '/^OCIDISK-FIO seq/ {print $3/1024}')")
    rnd+=("$(echo "$out" | awk -F'[ ;]' '/^OCIDISK-FIO rand/ {print $4}')")
  done
  r[$s.gseq]=$(printf '%s\n' "${seq[@]}" | median)
  r[$s.grand]=$(printf '%s\n' "${rnd[@]}" | median)
done
stop_servers

# Boot: cold lazy disk vs qemu-storage-daemon on the raw file.
boot_once() { # SOCK -> seconds from QEMU start to the marker
  local s e
  s=$(now)
  vm_run "$1" boot initramfs.cpio | grep -q "^OCIDISK-BOOTED" || { echo "boot failed" >&2; return 1; }
  e=$(now)
  echo "$e - $s" | bc -l
}
ob=(); ot=(); qb=()
for i in $(seq "$runs"); do
  rm -rf "$work/cache"
  s=$(now)
  serve_ocidisk "$work/c$i.sock"
  ready=$(echo "$(now) - $s" | bc -l)
  b=$(boot_once "$work/c$i.sock")
  ob+=("$b"); ot+=("$(echo "$ready + $b" | bc -l)")
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  serve_qsd "$work/qb$i.sock"
  qb+=("$(boot_once "$work/qb$i.sock")")
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done
r[o.boot]=$(printf '%s\n' "${ob[@]}" | median)
r[o.boottotal]=$(printf '%s\n' "${ot[@]}" | median)
r[q.boot]=$(printf '%s\n' "${qb[@]}" | median)

ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
echo
echo "image: debootstrap minbase bookworm, read-only ext4, $(stat -c %s "$work/raw.img") bytes; $runs runs each, medians"
printf '%-46s %14s %14s %7s\n' "" "ocidisk serve" "qsd raw file" "ratio"
row() { printf '%-46s %14s %14s %7s\n' "$1" "${r[o.$2]}" "${r[q.$2]}" "$(ratio "${r[o.$2]}" "${r[q.$2]}")"; }
row "host libblkio 4K random read QD1 (IOPS)" qd1
row "host libblkio 4K random read QD32 (IOPS)" qd32
row "host libblkio 1M sequential read QD1 (MiB/s)" seq
row "guest fio 1M sequential direct read (MiB/s)" gseq
row "guest fio 4K random direct read QD1 (IOPS)" grand
row "boot to marker, QEMU start (s; lower is better)" boot
printf '%-46s %14s\n' "cold serve start + boot (s)" "${r[o.boottotal]}"
