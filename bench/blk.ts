// `pnpm bench blk [--quick] [--seconds S] [--size MiB]`: vmm-blk against
// qemu-storage-daemon's vhost-user-blk export, both driven by the same
// front-end (core's VhostUserFrontend + @vmm/virtio-blk's BlkClient) over
// the same image, in one run: 4 KiB random read and write at queue depth
// 32, 1 MiB sequential read and write at queue depth 4, raw and qcow2.
// Last line: {"bench":"blk","ours":IOPS,"reference":IOPS,"ratio":R} for
// 4 KiB random read on raw.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLogger, processMemory } from '@vmm/core';
import { BlkClient, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '@vmm/virtio-blk';

/** The bin a user runs (its launcher applies the device processes' runtime settings). */
const VMM_BLK = fileURLToPath(new URL('../packages/virtio-blk/bin/vmm-blk', import.meta.url));
const MIB = 1 << 20;

interface Workload {
  name: string;
  type: number;
  bs: number;
  qd: number;
  random: boolean;
}

const WORKLOADS: Workload[] = [
  { name: '4k randread qd32', type: VIRTIO_BLK_T_IN, bs: 4096, qd: 32, random: true },
  { name: '4k randwrite qd32', type: VIRTIO_BLK_T_OUT, bs: 4096, qd: 32, random: true },
  { name: '1m seqread qd4', type: VIRTIO_BLK_T_IN, bs: MIB, qd: 4, random: false },
  { name: '1m seqwrite qd4', type: VIRTIO_BLK_T_OUT, bs: MIB, qd: 4, random: false },
];

async function waitFor(path: string, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (existsSync(path)) return;
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before listening on ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${what} did not listen on ${path} within 15 s`);
}

function startServer(kind: 'ours' | 'reference', format: 'raw' | 'qcow2', image: string, sock: string): ChildProcess {
  if (existsSync(sock)) rmSync(sock);
  if (kind === 'ours') {
    const prof = process.env.VMM_BLK_PROF ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${process.env.VMM_BLK_PROF}` } : {};
    return spawn(VMM_BLK, ['--socket', sock, '--file', image, '--format', format, '--log-level', 'warn'], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...prof } });
  }
  const node = format === 'raw' ? 'driver=raw,node-name=disk0,file=file0' : 'driver=qcow2,node-name=disk0,file=file0';
  return spawn('qemu-storage-daemon', [
    '--blockdev', `driver=file,node-name=file0,filename=${image}`,
    '--blockdev', node,
    '--export', `type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=${sock},node-name=disk0,writable=on`,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  await done;
  clearTimeout(t);
}

type Kind = 'ours' | 'reference';
/** Slices per workload, alternating the two servers (ours, ref, ref, ours, …). */
const SLICES = 4;
const mib = (b: number) => (b / MIB).toFixed(1);

/** Run one workload for `seconds`; returns the operations done and the seconds taken. */
async function runWorkload(c: BlkClient, w: Workload, seconds: number, bufs: number[], sizeBytes: number): Promise<{ ops: number; secs: number }> {
  const blocks = Math.floor(sizeBytes / w.bs);
  let seq = 0;
  let ops = 0;
  let seed = 0x12345678;
  const rnd = (): number => {
    // xorshift32: a cheap deterministic offset stream, the same for both servers.
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % blocks;
  };
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const worker = async (slot: number): Promise<void> => {
    const addr = bufs[slot]!;
    while (performance.now() < end) {
      const block = w.random ? rnd() : seq++ % blocks;
      const st = await c.request(0, w.type, (block * w.bs) / 512, [{ addr, len: w.bs, write: w.type === VIRTIO_BLK_T_IN }]);
      if (st !== 0) throw new Error(`${w.name}: request at block ${block} failed with status ${st}`);
      ops++;
    }
  };
  await Promise.all(Array.from({ length: w.qd }, (_, i) => worker(i)));
  return { ops, secs: (performance.now() - t0) / 1000 };
}

export async function main(args: string[] = []): Promise<void> {
  const { values } = parseArgs({ args, options: { quick: { type: 'boolean' }, seconds: { type: 'string' }, size: { type: 'string' } } });
  const quick = values.quick ?? false;
  const seconds = Number(values.seconds ?? (quick ? 0.5 : 3));
  const sizeMiB = Number(values.size ?? (quick ? 64 : 256));
  const log = createLogger('blk-bench', undefined, 'warn');
  for (const tool of ['qemu-img', 'qemu-storage-daemon']) {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
    } catch {
      throw new Error(`${tool} is missing: install Debian packages qemu-utils and qemu-system-common (scripts/setup.sh)`);
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-blk-'));
  const rows: { format: string; workload: string; ours: { iops: number; mbps: number }; reference: { iops: number; mbps: number } }[] = [];
  const memory: string[] = [];
  const kinds = (process.env.BLK_ONLY ? [process.env.BLK_ONLY] : ['ours', 'reference']) as Kind[];
  try {
    // Fully written images, so reads hit data (qcow2: every cluster allocated).
    const raw = join(dir, 'disk.raw');
    execFileSync('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', `count=${sizeMiB}`, 'status=none']);
    const qcow2 = join(dir, 'disk.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
    for (const [format, original] of [['raw', raw], ['qcow2', qcow2]] as const) {
      // Both servers run side by side, each behind its own client, and every workload alternates
      // between them in short slices: on a shared, loaded machine a slow minute then hurts both alike.
      const servers: Partial<Record<Kind, { child: ChildProcess; c: BlkClient; bufs: number[]; big: number[] }>> = {};
      try {
        for (const kind of kinds) {
          const sock = join(dir, `${kind}-${format}.sock`);
          // Each server gets its own copy: both run at once, and each locks its image.
          const image = join(dir, `${kind}.${format}`);
          copyFileSync(original, image);
          const child = startServer(kind, format, image, sock);
          servers[kind] = { child, c: undefined as unknown as BlkClient, bufs: [], big: [] };
          await waitFor(sock, child, kind === 'ours' ? 'vmm-blk' : 'qemu-storage-daemon');
          const c = await BlkClient.connect(sock, { queues: 1, queueSize: 128, ramSize: 160 * MIB, log });
          servers[kind] = { child, c, bufs: Array.from({ length: 32 }, () => c.alloc(4096 * 2)), big: Array.from({ length: 4 }, () => c.alloc(MIB)) };
        }
        for (const w of WORKLOADS) {
          const acc: Partial<Record<Kind, { ops: number; secs: number }>> = {};
          for (let slice = 0; slice < SLICES; slice++) {
            for (const kind of slice % 2 === 0 ? kinds : [...kinds].reverse()) {
              const srv = servers[kind]!;
              const r = await runWorkload(srv.c, w, seconds / SLICES, w.bs === MIB ? srv.big : srv.bufs, sizeMiB * MIB);
              const a = (acc[kind] ??= { ops: 0, secs: 0 });
              a.ops += r.ops;
              a.secs += r.secs;
            }
          }
          const rate = (k: Kind) => {
            const a = acc[k];
            return a ? { iops: a.ops / a.secs, mbps: (a.ops * w.bs) / a.secs / 1e6 } : { iops: NaN, mbps: NaN };
          };
          rows.push({ format, workload: w.name, ours: rate('ours'), reference: rate('reference') });
        }
        for (const kind of kinds) {
          const m = processMemory(servers[kind]!.child.pid);
          if (m) memory.push(`${format} ${kind === 'ours' ? 'vmm-blk' : 'qemu-storage-daemon'}: RSS ${mib(m.rssBytes)} MiB = own ${mib(m.ownBytes)} MiB + guest RAM (memfd) pages ${mib(m.sharedMemfdBytes)} MiB`);
        }
      } finally {
        for (const srv of Object.values(servers)) {
          srv.c?.close();
          await stop(srv.child);
        }
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const pad = (s: string, n: number) => s.padEnd(n);
  const num = (v: number) => v.toFixed(0).padStart(9);
  console.log(`${pad('format', 7)}${pad('workload', 20)}${'ours IOPS'.padStart(10)}${'ref IOPS'.padStart(10)}${'ours MB/s'.padStart(10)}${'ref MB/s'.padStart(10)}${'ratio'.padStart(7)}`);
  for (const r of rows) {
    console.log(`${pad(r.format, 7)}${pad(r.workload, 20)} ${num(r.ours.iops)} ${num(r.reference.iops)} ${num(r.ours.mbps)} ${num(r.reference.mbps)} ${(r.ours.iops / r.reference.iops).toFixed(2).padStart(6)}`);
  }
  for (const m of memory) console.log(m);
  const head = rows.find((r) => r.format === 'raw' && r.workload === WORKLOADS[0]!.name)!;
  console.log(JSON.stringify({ bench: 'blk', ours: Math.round(head.ours.iops), reference: Math.round(head.reference.iops), ratio: Number((head.ours.iops / head.reference.iops).toFixed(3)) }));
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main(process.argv.slice(2));
}
