#!/usr/bin/env bash
# Build (once) and print the path of an OCI layout holding a real Debian
# image: `debootstrap --variant=minbase bookworm` as one tar+gzip layer,
# tagged `bookworm`. Cached under $OCIDISK_FIXTURES (default
# /var/cache/ocidisk-fixtures) so tests and the demo pay ~1 min only once.
# Needs root (debootstrap) and Debian's package mirror.
set -euo pipefail
fixtures=${OCIDISK_FIXTURES:-/var/cache/ocidisk-fixtures}
out="$fixtures/debian-bookworm-minbase"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ -f "$out/index.json" ] && [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$fixtures"
work=$(mktemp -d "$fixtures/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "debian-image: debootstrap --variant=minbase bookworm (about a minute)" >&2
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}
# Drop what varies from run to run and what a container image never carries.
rm -rf "$work/rootfs/var/cache/apt/"*.bin "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
       "$work/rootfs/var/log/"*.log "$work/rootfs/dev/"* "$work/rootfs/proc/"* "$work/rootfs/sys/"*

echo "debian-image: packing an OCI layout with umoci" >&2
umoci init --layout "$work/layout"
umoci new --image "$work/layout:bookworm"
umoci insert --image "$work/layout:bookworm" "$work/rootfs" / >/dev/null
umoci config --image "$work/layout:bookworm" \
  --config.cmd /bin/bash \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --os linux --architecture amd64
umoci gc --layout "$work/layout"
touch "$work/layout/.complete"
rm -rf "$out"
mv "$work/layout" "$out"
echo "$out"
