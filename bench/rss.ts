// `pnpm bench rss`: resident memory of each idle device process (vmm-switch,
// vmm-net attached to it, vmm-blk on a small raw image, vmm-iommu), each
// started the way the orchestrator starts it (core's DeviceProcess through
// the shared launcher, bin/run-ts.sh), against a bare Node process (the same
// pinned Node, `-e` with a timer) measured in the same run.
//
// Two rounds: "cold" with Node's compile cache turned off
// (NODE_DISABLE_COMPILE_CACHE=1: every .ts module goes through Node's type
// stripper), then "warm" with the launcher's cache, filled by the cold round's
// starts if it was empty. Each figure is VmRSS without RssShmem (the frame
// rings and guest RAM memfds a device maps are shared memory, not the
// process's own), read from /proc/PID/status 1.5 s after the ready handshake.
// Last line: {"bench":"rss","bare_kib":…,"over_bare_mib":{…},"ratio":…}
// (ratio: the largest warm device process ÷ bare Node).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, DeviceProcess } from '@vmm/core';

const src = (p: string) => fileURLToPath(new URL(`../packages/${p}`, import.meta.url));
const log = createLogger('rss-bench', undefined, 'warn');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Rss {
  rss: number;
  anon: number;
  file: number;
}

function rssOf(pid: number | undefined): Rss {
  if (pid === undefined) throw new Error('process has no pid');
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
  return { rss: kb('VmRSS') - kb('RssShmem'), anon: kb('RssAnon'), file: kb('RssFile') };
}

function bareNode(): Rss {
  const out = execFileSync(process.execPath, ['-e', 'setTimeout(() => { console.log(require("fs").readFileSync("/proc/self/status", "utf8")); }, 1500)']).toString();
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(out)?.[1] ?? NaN);
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') };
}

async function round(dir: string, env: Record<string, string>): Promise<Record<string, Rss>> {
  const procs: DeviceProcess[] = [];
  const start = async (name: string, args: string[]) => {
    const p = new DeviceProcess({ name, args, env: { ...process.env, ...env, VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir } as Record<string, string>, log });
    await p.start();
    procs.push(p);
    return p;
  };
  try {
    const image = join(dir, 'disk.raw');
    writeFileSync(image, Buffer.alloc(1 << 20));
    const started = {
      'vmm-switch': await start('switch', [src('virtio-net/src/switch-main.ts'), '--name', 'rss']),
      'vmm-net': await start('net', [src('virtio-net/src/main.ts'), '--socket', join(dir, 'net.sock'), '--switch', 'rss', '--id', 'net0']),
      'vmm-blk': await start('blk', [src('virtio-blk/src/main.ts'), '--socket', join(dir, 'blk.sock'), '--file', image, '--id', 'blk0']),
      'vmm-iommu': await start('iommu', [src('iommu/src/main.ts'), '--socket', join(dir, 'iommu.sock'), '--endpoints', '1', '--id', 'iommu0']),
    };
    await sleep(1500);
    return Object.fromEntries(Object.entries(started).map(([k, p]) => [k, rssOf(p.pid)]));
  } finally {
    for (const p of procs.reverse()) await p.stop();
  }
}

export async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-rss-'));
  try {
    const bare = bareNode();
    const cold = await round(dir, { NODE_DISABLE_COMPILE_CACHE: '1' });
    // The launcher's cache; a first warm round fills it if the cold one could not (it had the cache off).
    await round(dir, {});
    const warm = await round(dir, {});
    const mib = (k: number) => (k / 1024).toFixed(1);
    console.log(`bare node: ${mib(bare.rss)} MiB (anon ${mib(bare.anon)}, file ${mib(bare.file)})`);
    const over: Record<string, number> = {};
    for (const k of Object.keys(warm)) {
      const w = warm[k]!;
      const c = cold[k]!;
      over[k] = Number(((w.rss - bare.rss) / 1024).toFixed(1));
      console.log(`${k.padEnd(11)} cold ${mib(c.rss)} MiB   warm ${mib(w.rss)} MiB (anon ${mib(w.anon)}, file ${mib(w.file)})   ${over[k]! >= 0 ? '+' : ''}${over[k]} MiB over bare`);
    }
    const worst = Math.max(...Object.values(warm).map((r) => r.rss));
    console.log(JSON.stringify({ bench: 'rss', bare_kib: bare.rss, over_bare_mib: over, ratio: Number((worst / bare.rss).toFixed(3)) }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
