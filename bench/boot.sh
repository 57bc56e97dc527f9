#!/usr/bin/env bash
# Benchmark: what a booting guest fetches from the registry, and what a
# prefetch profile does to its boot time. The debootstrap Debian image in a
# local docker-registry; `ocidisk serve --read-only` from an empty cache
# each run; QEMU (TCG) boots the test kit and its init runs dpkg and ls from
# the image (the boot of bench/serve.sh). Per run:
#   fetched: registry bytes the boot cost (the metrics' source bytes after
#            the boot minus at the ready line), and as a share of the
#            compressed image;
#   boot:    QEMU start -> the init's marker;
# first plain, then with --prefetch-profile of a boot recorded once with
# --record-profile (the profile's spans are fetched in the background from
# the ready line on, so they count as the boot's).
# Usage: bench/boot.sh [RUNS]   (default 5). Prints medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare
kit=$(bash scripts/vm-kit.sh)
work=$(mktemp -d /var/tmp/ocidisk-bench.XXXXXX)
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  stop_registry
  rm -rf "$work"
}
trap cleanup EXIT
push_debian "$work"
layer_bytes=$(stat -c %s "$layout/blobs/sha256/$layer")
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

fetched() { # bytes received from the registry so far
  curl -fsS "http://127.0.0.1:$mport/metrics" |
    awk -v k="ocidisk_source_bytes_total{source=\"$REGISTRY\"}" '$1 == k {print $2}'
}
start() { # EXTRA...: a cold serve; waits for its ready line
  rm -rf "$work/cache" "$work/s.sock"
  OCIDISK_CACHE_DIR=$work/cache "$bin" serve --read-only "$ref" --socket "$work/s.sock" \
    --metrics "127.0.0.1:$mport" "$@" > "$work/serve.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 600); do grep -q "^serving" "$work/serve.log" && return 0; sleep 0.05; done
  echo "ocidisk serve did not start:" >&2; cat "$work/serve.log" >&2; return 1
}
stop() { kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true; serve_pid=; }
boot() { # -> "SECONDS BYTES"
  local b0 s e
  b0=$(fetched); s=$(now)
  vm_run "$work/s.sock" boot initramfs.cpio | grep -q "^OCIDISK-BOOTED" || { echo "boot failed" >&2; return 1; }
  e=$(now)
  echo "$(echo "$e - $s" | bc -l) $(( $(fetched) - b0 ))"
}

start --record-profile "$work/boot.profile"
boot > /dev/null
stop
spans=$(grep -c '"layer"' "$work/boot.profile")

declare -A t b
for mode in plain profile; do
  ts=(); bs=()
  for _ in $(seq "$runs"); do
    if [ "$mode" = profile ]; then start --prefetch-profile "$work/boot.profile"; else start; fi
    read -r secs bytes < <(boot)
    stop
    ts+=("$secs"); bs+=("$bytes")
  done
  t[$mode]=$(printf '%s\n' "${ts[@]}" | median)
  b[$mode]=$(printf '%s\n' "${bs[@]}" | median)
done

pct() { echo "100 * $1 / $layer_bytes" | bc -l | xargs printf '%.1f'; }
echo "image: debootstrap minbase bookworm, layer $layer_bytes bytes gzip; recorded profile: $spans spans; $runs runs each, medians"
printf '%-34s %10s %14s %8s\n' "" "boot (s)" "fetched (B)" "share"
printf '%-34s %10s %14s %7s%%\n' "cold serve, no profile" "${t[plain]}" "${b[plain]%.*}" "$(pct "${b[plain]}")"
printf '%-34s %10s %14s %7s%%\n' "cold serve, --prefetch-profile" "${t[profile]}" "${b[profile]%.*}" "$(pct "${b[profile]}")"
