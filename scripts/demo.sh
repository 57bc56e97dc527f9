#!/usr/bin/env bash
# The main job, end to end on this machine: install what is needed, build a
# real Debian image, start a local registry holding it, and show ocidisk
# inspecting and pulling it (a second pull downloads nothing), then writing
# it as an ext4 disk image that e2fsck accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/setup.sh
layout=$(bash scripts/debian-image.sh)
echo "demo: building ocidisk (release)" >&2
cargo build --release --quiet
bin=$PWD/target/release/ocidisk

work=$(mktemp -d /tmp/ocidisk-demo.XXXXXX)
trap 'stop_registry; rm -rf "$work"' EXIT
start_registry "$work"
ref=$REGISTRY/debian:bookworm
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
