#!/usr/bin/env bash
# Build the small guest the VM tests and benchmarks boot: Debian's kernel and
# an initramfs of busybox-static, the virtio, ext4 and xfs modules, and an init
# that mounts /dev/vda and does what the kernel command line asks.
#
#   scripts/vm-kit.sh [DIR]   (default /var/cache/ocidisk-fixtures/vm)
#
# Prints DIR; DIR/vmlinuz, DIR/initramfs.cpio and DIR/initramfs-fio.cpio (the
# same plus fio and its libraries, ~90 MB, for the benchmarks) are reused
# while the kernel and this script are unchanged.
#
# The init understands, on the kernel command line:
#   ocidisk.mount=ro|rw    how to mount /dev/vda (default ro)
#   ocidisk.fs=ext4|ext3|xfs   the filesystem type to mount it as (default ext4);
#                          the init reports what the kernel mounted
#   ocidisk.action=tree    print every entry under the mount between markers:
#                          PATH f|d|l|c|b|p MODE UID GID [SIZE SHA256 | -> TARGET | MAJ MIN]
#   ocidisk.action=write:TEXT   write TEXT to /mnt/ocidisk-guest-file, sync
#   ocidisk.action=cat     print /mnt/ocidisk-guest-file between markers
#   ocidisk.action=bench   fio sequential (1 MiB) and random (4 KiB) direct
#                          reads of /dev/vda, if fio is in the initramfs
#   ocidisk.action=boot    run dpkg and ls from the image in a chroot (the
#                          boot-time benchmark; needs a Debian image)
#   ocidisk.action=survive[:TEXT]   ocidisk.rounds=N (default 3): N rounds of
#                          "OCIDISK-ROUND i", dropping the page cache, then the
#                          tree as above (so every block is read from the
#                          device again); with TEXT (rw mounts), first write
#                          TEXT to /mnt/ocidisk-guest-file and fsync it, and
#                          print the file between CAT markers in every round;
#                          at the end "OCIDISK-IOERRORS n" from the kernel log.
#                          The host restarts the server while this runs.
# and ends with "OCIDISK-DONE rc=N" and a power-off.
set -euo pipefail

dir=${1:-/var/cache/ocidisk-fixtures/vm}
# The newest kernel that has both an image in /boot and its modules.
kver=$(ls /boot | sed -n 's/^vmlinuz-//p' | sort -V | while read -r v; do
  [ -d "/lib/modules/$v/kernel" ] && echo "$v"; done | tail -1)
[ -n "$kver" ] || { echo "vm-kit: no kernel in /boot with modules; run scripts/setup.sh" >&2; exit 1; }
stamp="$kver $(sha256sum "$0" | cut -c1-16)"
fresh() { [ -f "$dir/stamp" ] && [ "$(cat "$dir/stamp")" = "$stamp" ]; }
fresh && { echo "$dir"; exit 0; }
mkdir -p "$dir"
# Tests run in parallel: one builder at a time, the others wait and reuse.
exec 9>"$dir/.lock"
flock 9
fresh && { echo "$dir"; exit 0; }
rm -f "$dir/stamp"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,dev,proc,sys,mnt,lib/modules,tmp}
cp /bin/busybox "$stage/bin/busybox"

# Modules in load order (dependencies first). Debian builds them all as
# modules; none is compressed on bookworm, but handle .xz/.zst anyway.
mods=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
      virtio_blk crc16 mbcache jbd2 crc32c_generic libcrc32c ext4 xfs)
for m in "${mods[@]}"; do
  f=$(modinfo -k "$kver" -n "$m")
  case "$f" in
    *.ko) cp "$f" "$stage/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$stage/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$stage/lib/modules/$m.ko" ;;
    *) echo "vm-kit: module $m: unexpected file $f" >&2; exit 1 ;;
  esac
done

cat > "$stage/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
# Kernel messages from here on would interleave with the reports below.
echo 1 > /proc/sys/kernel/printk
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# Module parameters on the kernel command line reach built-in drivers only;
# hand virtio_mmio its device list (microvm without ACPI) explicitly.
mmio=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^virtio_mmio\.//p')
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio \
         virtio_blk crc16 mbcache jbd2 crc32c_generic libcrc32c ext4 xfs; do
  params=""
  [ "$m" = virtio_mmio ] && params="$mmio"
  insmod /lib/modules/$m.ko $params || echo "OCIDISK-INSMOD-FAILED $m"
done
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
mode=$(arg ocidisk.mount); mode=${mode:-ro}
fs=$(arg ocidisk.fs); fs=${fs:-ext4}
action=$(arg ocidisk.action); action=${action:-tree}
tree() {
  echo "OCIDISK-TREE-BEGIN"
  cd /mnt
  find . | sort | while read -r p; do
    if [ -L "$p" ]; then
      echo "$p l $(stat -c '%a %u %g' "$p") -> $(readlink "$p")"
    elif [ -f "$p" ]; then
      echo "$p f $(stat -c '%a %u %g %s' "$p") $(sha256sum "$p" | cut -d' ' -f1)"
    elif [ -d "$p" ]; then
      echo "$p d $(stat -c '%a %u %g' "$p")"
    else
      t=o; [ -c "$p" ] && t=c; [ -b "$p" ] && t=b; [ -p "$p" ] && t=p
      echo "$p $t $(stat -c '%a %u %g %t %T' "$p")"
    fi
  done
  cd /
  echo "OCIDISK-TREE-END"
}
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "OCIDISK-QUEUES $(ls /sys/block/vda/mq 2>/dev/null | wc -l)"
rc=0
if mount -t "$fs" -o "$mode" /dev/vda /mnt; then
  echo "OCIDISK-MOUNTED $mode $(awk '$2 == "/mnt" {print $3}' /proc/mounts)"
  case "$action" in
    tree)
      tree
      ;;
    survive*)
      text=${action#survive}; text=${text#:}
      if [ -n "$text" ]; then
        echo "$text" | dd of=/mnt/ocidisk-guest-file conv=fsync 2>/dev/null || rc=1
        echo "OCIDISK-WROTE"
      fi
      rounds=$(arg ocidisk.rounds); rounds=${rounds:-3}
      r=1
      while [ $r -le $rounds ]; do
        sync; echo 3 > /proc/sys/vm/drop_caches
        echo "OCIDISK-ROUND $r"
        tree
        if [ -n "$text" ]; then
          echo "OCIDISK-CAT-BEGIN"; cat /mnt/ocidisk-guest-file || rc=1; echo "OCIDISK-CAT-END"
        fi
        r=$((r+1))
      done
      echo "OCIDISK-IOERRORS $(dmesg | grep -ci 'i/o error')"
      ;;
    write:*)
      echo "${action#write:}" > /mnt/ocidisk-guest-file && sync || rc=1
      ;;
    cat)
      echo "OCIDISK-CAT-BEGIN"
      cat /mnt/ocidisk-guest-file || rc=1
      echo "OCIDISK-CAT-END"
      ;;
    bench)
      umount /mnt
      for job in "seq --rw=read --bs=1M --size=128M" "rand --rw=randread --bs=4k --size=128M --runtime=5 --time_based"; do
        set -- $job
        echo "OCIDISK-FIO $1 $(fio --name=$1 --filename=/dev/vda --direct=1 --ioengine=psync --iodepth=1 $2 $3 $4 $5 $6 --output-format=terse --terse-version=3 2>&1 | cut -d';' -f7,8)"
      done
      ;;
    boot)
      # What a booting system does first: run programs from the image.
      chroot /mnt /bin/sh -c 'dpkg --version && ls -l /usr/bin /etc' >/dev/null 2>&1 || rc=1
      echo "OCIDISK-BOOTED $(sed -n 's/^PRETTY_NAME=//p' /mnt/etc/os-release 2>/dev/null)"
      ;;
  esac
  umount /mnt 2>/dev/null
else
  rc=1
fi
echo "OCIDISK-DONE rc=$rc"
poweroff -f
INIT
chmod +x "$stage/init"
pack() { (cd "$stage" && find . | cpio -o -H newc --quiet) > "$1.tmp" && mv "$1.tmp" "$1"; }
pack "$dir/initramfs.cpio"

# The benchmark guest also gets fio with its shared libraries.
cp "$(command -v fio)" "$stage/bin/fio"
ldd "$(command -v fio)" | awk '/=>/ {print $3}' | while read -r lib; do
  [ -e "$lib" ] || continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
mkdir -p "$stage/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$stage/lib64/"
pack "$dir/initramfs-fio.cpio"

cp "/boot/vmlinuz-$kver" "$dir/vmlinuz.tmp" && mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
echo "$stamp" > "$dir/stamp"
echo "$dir"
