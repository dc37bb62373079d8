#!/usr/bin/env bash
# An x86_64 guest for QEMU as a vhost-user front-end with a vIOMMU
# (test/blk-iotlb-qemu.test.ts): the host's own Debian (bookworm) kernel
# package and busybox-static for amd64, fetched with `apt-get download` from
# the host's apt sources and unpacked under ~/.cache/vmm/x86/KERNEL_VERSION.
# Why x86_64: QEMU 7.2's riscv64 `-M virt` has no hotplug handler for
# virtio-iommu-pci, and bookworm's amd64 kernel has no VIRTIO_IOMMU, but it
# has INTEL_IOMMU, and QEMU's intel-iommu with device-iotlb=on drives a
# vhost-user back-end through IOTLB messages.
# Prints the directory (boot/vmlinuz-*, lib/modules/*, bin/busybox). A no-op when cached.
set -euo pipefail
if [ "${1:-}" = --help ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/x86"
image=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
if [ -z "$image" ]; then
  echo "x86-guest: apt knows no linux-image-amd64 (run apt-get update first)" >&2
  exit 1
fi
dir="$cache/${image#linux-image-}"
if [ -f "$dir/.done" ]; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d "$cache.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")"; mktemp -d "$cache.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq "$image" busybox-static >/dev/null 2>&1) || { echo "x86-guest: apt-get download $image busybox-static failed" >&2; exit 1; }
mkdir -p "$tmp/tree"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/tree"; done
mkdir -p "$cache"
rm -rf "$dir"
mv "$tmp/tree" "$dir"
touch "$dir/.done"
echo "$dir"
