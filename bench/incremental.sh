#!/usr/bin/env bash
# Benchmark: a new image version from the old one's image. v1 is the
# debootstrap Debian image, v2 is v1 plus a small layer (bench/add_layer.py:
# an app directory with a config file and a 200 KB binary). In the same run, with
# both images' layers cached (warm):
#   ocidisk materialize v2 v2.img                    (fresh)
#   ocidisk materialize v2 out.img --base v1.img     (to a new file: OLD copied, then patched)
#   ocidisk materialize v2 v1.img --base v1.img      (in place; v1.img restored between runs)
# plus the chunk sharing `ocidisk diff` reports and the bytes --base rewrote.
# Usage: bench/incremental.sh [RUNS]   (default 5). Prints medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
runs=${1:-5}
bench_prepare

work=$(mktemp -d /tmp/ocidisk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -a "$layout" "$work/layout"
mkdir -p "$work/app"
printf 'port = 8080\n' >"$work/app/config.toml"
head -c 200000 /dev/urandom >"$work/app/app.bin"
/usr/bin/python3 bench/add_layer.py "$work/layout" bookworm v2 "$work/app" /srv/app
v1=oci:$work/layout:bookworm
v2=oci:$work/layout:v2
export OCIDISK_CACHE_DIR=$work/cache

"$bin" materialize "$v1" "$work/v1.img" 2>/dev/null
cp -p "$work/v1.img" "$work/v1.keep"
cp -p "$work/v1.img.ocidisk.json" "$work/v1.keep.ocidisk.json"
"$bin" materialize "$v2" "$work/v2.img" 2>/dev/null

cold() { rm -f "$work/fresh.img" "$work/out.img" "$work/"*.ocidisk.json.tmp; sync; }
restore() { # put v1.img back as ocidisk left it (mtime kept: its record's stamp)
  cp -p --sparse=always "$work/v1.keep" "$work/v1.img"
  cp -p "$work/v1.keep.ocidisk.json" "$work/v1.img.ocidisk.json"
  sync
}
in_place_runs() {
  local t=()
  for _ in $(seq "$runs"); do
    restore
    local s; s=$(now)
    "$bin" materialize "$v2" "$work/v1.img" --base "$work/v1.img" >/dev/null 2>&1
    local e; e=$(now)
    t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | median
}

fresh_s=$(time_runs "$bin" materialize "$v2" "$work/fresh.img")
base_new_s=$(time_runs "$bin" materialize "$v2" "$work/out.img" --base "$work/v1.keep")
in_place_s=$(in_place_runs)

# Correctness of what was timed, and what it cost.
cmp -s "$work/v1.img" "$work/v2.img" || { echo "in-place --base differs from a fresh v2" >&2; exit 1; }
rm -f "$work/out.img"
said=$("$bin" materialize "$v2" "$work/out.img" --base "$work/v1.keep" 2>&1 >/dev/null | tail -1)
cmp -s "$work/out.img" "$work/v2.img" || { echo "--base to a new file differs from a fresh v2" >&2; exit 1; }
diff_json=$("$bin" diff --json "$v1" "$v2")
read -r shared chunks changed_bytes added < <(printf '%s' "$diff_json" | /usr/bin/python3 -c \
  'import json,sys; j=json.load(sys.stdin); print(j["shared_chunks"], j["new"]["chunks"], j["changed_bytes"], j["added_layers_bytes"])')
written=$(echo "$said" | sed -n 's/.*rewrote \(.*\)$/\1/p')

echo "v1: the Debian image; v2: v1 + a layer adding /srv/app ($added bytes compressed); ext4, writable; $runs runs each, medians, layers cached"
printf '%-58s %8s s\n' "ocidisk materialize v2 (fresh, warm)" "$fresh_s"
printf '%-58s %8s s  (%.2fx)\n' "ocidisk materialize v2 --base v1.img, to a new file" "$base_new_s" "$(echo "$base_new_s / $fresh_s" | bc -l)"
printf '%-58s %8s s  (%.2fx)\n' "ocidisk materialize v2 --base v1.img, in place" "$in_place_s" "$(echo "$in_place_s / $fresh_s" | bc -l)"
printf '%-58s %8s\n' "chunks of v2 equal to v1's (512 KiB, non-zero)" "$shared of $chunks"
printf '%-58s %8s bytes\n' "device bytes --base rewrites (ocidisk diff)" "$changed_bytes"
printf '%-58s %8s\n' "what --base said" "$written"
