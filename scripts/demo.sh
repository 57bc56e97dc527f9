#!/usr/bin/env bash
# The main job, end to end on this machine: install what is needed, build a
# real Debian image, start a local registry holding it, and show ocidisk
# inspecting and pulling it (a second pull downloads nothing), then writing
# it as an ext4 disk image that e2fsck accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
layout=$(bash scripts/debian-image.sh)
echo "demo: building ocidisk (release)" >&2
cargo build --release --quiet
bin=$PWD/target/release/ocidisk

work=$(mktemp -d /tmp/ocidisk-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null; wait $registry_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
ref=127.0.0.1:$port/debian:bookworm
echo "demo: pushing the Debian image to the local registry at $ref" >&2
skopeo copy -q --dest-tls-verify=false "oci:$layout:bookworm" "docker://$ref"

export OCIDISK_CACHE_DIR=$work/cache
set -x
"$bin" inspect "$ref"
"$bin" pull "$ref"
"$bin" pull "$ref"
"$bin" cache list
"$bin" materialize "$ref" "$work/debian.img"
e2fsck -fn "$work/debian.img"
ls -ls "$work/debian.img"
