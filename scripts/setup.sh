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
  openssl           # self-signed certificate for the TLS registry
  ca-certificates
  curl
  debootstrap       # the realistic Debian image
  e2fsprogs         # e2fsck, debugfs
  zstd
  pigz
  bc                # bench arithmetic
  time              # GNU time: peak RSS in bench/
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages (${missing[*]}); run this script as root" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The docker-registry package ships a service on :5000; the tests start their
# own registries on free ports and need nothing from it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }
echo "setup: ok" >&2
