#!/usr/bin/env bash
# The main job, end to end on this machine: install what is needed, build a
# real Debian image, start a local registry holding it, and show ocidisk
# inspecting and pulling it (a second pull downloads nothing), writing it as
# ext4, ext3 and XFS disk images that e2fsck and xfs_repair accept,
# updating an image in place to a new version (equal to a fresh one), and
# finally booting a VM (QEMU,
# TCG) whose root disk is `ocidisk serve` fetching lazily from the registry.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/setup.sh
layout=$(bash scripts/debian-image.sh)
echo "demo: building ocidisk (release)" >&2
cargo build --release --quiet
bin=$PWD/target/release/ocidisk

work=$(mktemp -d /tmp/ocidisk-demo.XXXXXX)
serve_pid=
trap '[ -n "$serve_pid" ] && { kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null; }; stop_registry; rm -rf "$work"' EXIT
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
"$bin" materialize --fs ext3 "$ref" "$work/debian-ext3.img"
e2fsck -fn "$work/debian-ext3.img"
"$bin" materialize --fs xfs "$ref" "$work/debian.xfs"
xfs_repair -n "$work/debian.xfs"
"$bin" materialize --compress "$ref" "$work/debian.qcow2"
qemu-img check "$work/debian.qcow2"
qemu-img compare -f raw -F qcow2 "$work/debian.img" "$work/debian.qcow2"
ls -ls "$work/debian.img" "$work/debian.qcow2"
{ set +x; } 2>/dev/null

echo "demo: a new version (v2 = the image + an app layer): diff, then update debian.img in place" >&2
cp -a "$layout" "$work/layout"
mkdir -p "$work/app" && printf 'port = 8080\n' >"$work/app/config.toml"
/usr/bin/python3 bench/add_layer.py "$work/layout" bookworm v2 "$work/app" /srv/app
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$work/layout:v2" "docker://$REGISTRY/debian:v2"
set -x
"$bin" diff "$ref" "$REGISTRY/debian:v2"
"$bin" materialize "$REGISTRY/debian:v2" "$work/debian.img" --base "$work/debian.img"
"$bin" materialize "$REGISTRY/debian:v2" "$work/debian-v2.img"
cmp "$work/debian.img" "$work/debian-v2.img"
e2fsck -fn "$work/debian.img"
{ set +x; } 2>/dev/null

echo "demo: serving the image over vhost-user (lazy) and booting a VM from it" >&2
kit=$(bash scripts/vm-kit.sh)
rm -rf "$work/cache"   # cold: nothing cached, data comes from the registry on demand
"$bin" serve --read-only "$ref" --socket "$work/debian.sock" &
serve_pid=$!
for _ in $(seq 200); do [ -S "$work/debian.sock" ] && break; sleep 0.1; done
set -x
qemu-system-x86_64 -machine q35,accel=tcg,memory-backend=mem -cpu max -m 512 \
  -object memory-backend-memfd,id=mem,size=512M,share=on \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -chardev socket,id=c0,path="$work/debian.sock" -device vhost-user-blk-pci,chardev=c0 \
  -kernel "$kit/vmlinuz" -initrd "$kit/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 ocidisk.mount=ro ocidisk.action=boot" | tr -d '\r' | tee "$work/console.log"
{ set +x; } 2>/dev/null
grep -q "OCIDISK-DONE rc=0" "$work/console.log" || { echo "demo: the VM did not boot from the served disk" >&2; exit 1; }
echo "demo: the VM ran programs from the image, served lazily by ocidisk from $ref" >&2
kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; serve_pid=

echo "demo: --init: the same image as a VM that runs the image's own command (Debian's kernel and initrd)" >&2
kver=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
set -x
"$bin" materialize --init --read-only "$ref" "$work/debian-init.img"
"$bin" inspect "$ref" | grep 'Boot (--init)'
qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 512 \
  -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -drive file="$work/debian-init.img",format=raw,if=virtio,readonly=on \
  -kernel "/boot/vmlinuz-$kver" -initrd "/boot/initrd.img-$kver" \
  -append 'root=/dev/vda ro init=/.ocidisk/init console=ttyS0 quiet panic=-1 GREETING=hello -- /bin/bash -c "echo $GREETING from $(. /etc/os-release; echo $PRETTY_NAME): $(dpkg-query -W | wc -l) packages; exit 5"' \
  | tr -d '\r' | tee "$work/init-console.log"
{ set +x; } 2>/dev/null
grep -q "ocidisk-init: exit status 5" "$work/init-console.log" || { echo "demo: the --init VM did not run the image's command" >&2; exit 1; }
echo "demo: the VM booted into the image's own command and powered off with its exit status" >&2
