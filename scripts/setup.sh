#!/usr/bin/env bash
# Installs everything vmm needs on a fresh Debian machine, idempotently:
# Debian packages (QEMU as reference peer, dtc, e2fsprogs, socat, tmux for
# the terminal tests), pnpm,
# the npm dependencies (which bring the pinned Node), the AssemblyScript
# vCPU build, and the guest kit (Debian riscv64 kernel, modules, busybox,
# OpenSBI) cached outside the repo; the cross compiler and kernel build
# tools, and the virtio-iommu guest kernel built with them (`pnpm guest
# kernel --iommu`, cached outside the repo too).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-system-misc qemu-system-x86 qemu-system-common qemu-user qemu-utils device-tree-compiler socat tmux e2fsprogs xz-utils cpio kmod binutils-riscv64-linux-gnu gpgv debian-archive-keyring dpdk-dev librte-net-virtio23 librte-net-vhost23 librte-mempool-ring23 iproute2 gcc-riscv64-linux-gnu make bc flex bison libssl-dev libelf-dev patch)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  for attempt in 1 2 3; do
    if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      break
    fi
    [ "$attempt" = 3 ] && { echo "setup: apt-get failed three times; see the messages above" >&2; exit 1; }
    echo "setup: apt-get failed (attempt $attempt), retrying in 10 s" >&2; sleep 10
  done
fi

if ! command -v pnpm >/dev/null; then
  echo "setup: installing pnpm"
  npm install -g --silent pnpm@10.34.8
fi

pnpm install --frozen-lockfile --reporter=silent
pnpm run build
pnpm run guest fetch
# The virtio-iommu guest kernel (test/iommu.test.ts, bench/iommu.ts, `vmm run
# --iommu`): built once from Debian's linux-source-6.12 into the cache outside
# the repo (about 5 min on 2 cores, a progress line every 10 s), a no-op when
# the cache has it.
pnpm run guest kernel --iommu >/dev/null
# An x86_64 guest (bookworm's amd64 kernel and busybox-static, from the host's
# apt sources) for QEMU with intel-iommu as a vhost-user front-end with a
# vIOMMU (test/blk-iotlb-qemu.test.ts); cached, a no-op when present.
scripts/x86-guest.sh >/dev/null
