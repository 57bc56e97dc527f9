#!/usr/bin/env bash
# Soak: `ocidisk serve` (writable, lazy from a local registry, the Debian
# image, overlay on /var/tmp) under libblkio (bench/serve_bench.rs `mixed`):
# 4 KiB random reads and writes, half each, at QD32, a flush after every
# 1000 completions, reads of written blocks checked. For MINUTES (default
# 30) the server's RSS and open descriptors are sampled every minute;
# prints first, max and last of each, and the load's IOPS. Then the server
# is killed (SIGKILL) and started again on the same socket and caches five
# times: the median time to its ready line is the restart time.
# Usage: bench/soak.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
minutes=${1:-30}
bench_prepare
cargo build --release --quiet --example serve_bench
load=$PWD/target/release/examples/serve_bench
work=$(mktemp -d /var/tmp/ocidisk-soak.XXXXXX)
serve_pid=
load_pid=
cleanup() {
  # Wait for these two only: a bare `wait` would wait for the registry.
  for p in $load_pid $serve_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  stop_registry
  rm -rf "$work"
}
trap cleanup EXIT
push_debian "$work"
export OCIDISK_CACHE_DIR=$work/cache
sock=$work/disk.sock
"$bin" serve "$ref" --socket "$sock" --overlay "$work/overlay" > "$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 600); do grep -q "^serving" "$work/serve.log" && break; sleep 0.1; done
grep -q "^serving" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
"$load" "$sock" mixed 4096 32 $((minutes * 60)) > "$work/load.out" 2> "$work/load.err" &
load_pid=$!
sample() {
  local rss fds
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$serve_pid/status")
  fds=$(ls "/proc/$serve_pid/fd" | wc -l)
  echo "$1 $rss $fds" >> "$work/samples"
}
sleep 5
sample 0
for m in $(seq "$minutes"); do
  sleep 60
  kill -0 "$load_pid" 2>/dev/null || { [ "$m" -ge "$minutes" ] || { cat "$work/load.err" >&2; exit 1; }; }
  kill -0 "$serve_pid" || { echo "serve died" >&2; cat "$work/serve.log" >&2; exit 1; }
  sample "$m"
done
wait "$load_pid"
load_pid=
echo "minute rss_kib fds"
cat "$work/samples"
awk 'NR == 1 {fr = $2; ff = $3} {if ($2 > mr) mr = $2; if ($3 > mf) mf = $3; lr = $2; lf = $3}
  END {printf "RSS KiB: first %d, max %d, last %d\nfds: first %d, max %d, last %d\n", fr, mr, lr, ff, mf, lf}' "$work/samples"
echo "load (IOPS MiB/s): $(cat "$work/load.out")"
cat "$work/load.err"
restarts=()
for _ in 1 2 3 4 5; do
  kill -9 "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
  t0=$(date +%s.%N)
  "$bin" serve "$ref" --socket "$sock" --overlay "$work/overlay" > "$work/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 2000); do grep -q "^serving" "$work/serve.log" && break; sleep 0.005; done
  grep -q "^serving" "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
  restarts+=("$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')")
done
printf '%s\n' "${restarts[@]}" | sort -n | awk '{a[NR] = $1} END {printf "restart to ready (SIGKILL, same socket and caches): median %.3f s of %d\n", a[int((NR + 1) / 2)], NR}'
