#!/usr/bin/env bash
# Install what ocidisk's tests and demo need on a fresh Debian 12 machine.
# Idempotent: does nothing when everything is already there. Run as root.
set -euo pipefail

# Debian packages: the real registry and the tools that feed it, and the
# filesystem checkers and image tools the tests compare against.
packages=(
  docker-registry   # distribution 2.8: the registry the tests talk to
  skopeo            # pushes test images into it
  umoci             # OCI layouts from directories (demo image, oracle cross-check)
  apache2-utils     # htpasswd -B for the basic-auth registry
  openssl           # self-signed certificate for the TLS registry; P-256 keys and ECDSA signatures (trust tests)
  ca-certificates
  curl
  debootstrap       # the realistic Debian image
  e2fsprogs         # e2fsck, debugfs
  xfsprogs          # mkfs.xfs, xfs_repair, xfs_db: the XFS writer is checked against them
  zstd
  pigz
  bc                # bench arithmetic
  time              # GNU time: peak RSS in bench/ and in tests/hostile.rs
  linux-image-amd64 # the guest kernel the VM tests boot (virtio and ext4 as modules)
  busybox-static    # the guest's userland, in a small initramfs
  musl-tools        # musl-gcc: builds the static --init binary small (gcc -static is the fallback)
  cpio              # packs that initramfs
  fio               # in-guest and host benchmarks
  gnupg             # trust tests: keys and signatures for skopeo copy --sign-by
  containerd        # containerd:NS/REF source tests (a private daemon per test, CRI off)
  flatbuffers-compiler # flatc: reads and writes zTOCs to cross-check ocidisk's SOCI codec
)
# From bookworm-backports: bookworm's QEMU 7.2 does not work beside the
# machine's qemu-utils 10, which also comes from backports.
backports=(
  qemu-system-x86       # the VMM of the VM tests (TCG)
  qemu-block-extra
  qemu-utils            # qemu-storage-daemon, the bench baseline for serve
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

missing_bpo=()
for p in "${backports[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing_bpo+=("$p")
done

if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bpo[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]} ${missing_bpo[*]}); run this script as root" >&2
    exit 1
  fi
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" \
      > /etc/apt/sources.list.d/bookworm-backports.list
  fi
fi

if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bpo[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
fi
if [ ${#missing_bpo[@]} -gt 0 ]; then
  echo "setup: installing ${missing_bpo[*]} from bookworm-backports" >&2
  apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing_bpo[@]}" >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The docker-registry package ships a service on :5000; the tests start their
# own registries on free ports and need nothing from it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
echo "setup: ok" >&2
