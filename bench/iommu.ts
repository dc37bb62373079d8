// `pnpm bench iommu [--mib N]`: the disk with the IOMMU on and off, in the
// same run. Two guests (the IOMMU kernel both times, so only the IOMMU
// differs): one with `--iommu` (vmm-blk translates every DMA address through
// vmm-iommu's table, the guest maps and unmaps every buffer in strict mode),
// one without. Inside each: N MiB of 1 MiB O_DIRECT writes and reads, and
// 4 KiB O_DIRECT reads (QD1: busybox has no fio), timed by the guest. Also
// how many MAP/UNMAP requests reached vmm-iommu per second of I/O.
// Last line: {"bench":"iommu","blk_ratio":…,"net_ratio":null} (on ÷ off,
// MB/s; the NIC is not behind the IOMMU yet, so there is no net figure).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { QmpClient, startGuestSession } from '@vmm/orchestrator';

// Guest uptime (10 ms resolution) around each phase; busybox's date has no
// %N. Before and after a phase the guest prints a marker and sleeps a
// second, while the host reads vmm-iommu's request counters (query-iommu):
// the difference is exactly that phase's requests.
const phase = (name: string, cmd: string): string =>
  `echo "@@B ${name}@@"; sleep 1; s=$(cut -d' ' -f1 /proc/uptime); ${cmd}; echo "T ${name} $s $(cut -d' ' -f1 /proc/uptime)"; echo "@@E ${name}@@"; sleep 1`;

const PHASES = ['write1m', 'read1m', 'read4k'] as const;
type Phase = (typeof PHASES)[number];

interface Run {
  us: Record<Phase, number>;
  /** MAP and UNMAP requests to vmm-iommu during each phase, when the IOMMU is on. */
  requests: Record<Phase, { map: number; unmap: number }> | null;
}

async function run(iommu: boolean, mib: number, dir: string): Promise<Run> {
  const disk = join(dir, `disk-${iommu ? 'on' : 'off'}.img`);
  writeFileSync(disk, Buffer.alloc(0));
  writeFileSync(disk, Buffer.alloc(mib << 20));
  const cmds: Record<Phase, string> = {
    write1m: `dd if=/dev/zero of=/dev/vda bs=1M count=${mib} oflag=direct 2>/dev/null`,
    read1m: `dd if=/dev/vda of=/dev/null bs=1M count=${mib} iflag=direct 2>/dev/null`,
    read4k: `dd if=/dev/vda of=/dev/null bs=4k count=${mib * 64} iflag=direct 2>/dev/null`,
  };
  const cmd = [...PHASES.map((p) => phase(p, cmds[p])), 'echo @@END@@', 'echo "IOERRORS=$(dmesg | grep -ci \'i/o error\')"'].join('\n');
  const g = await startGuestSession({ cmd, disks: [`${disk},format=raw,id=d0`], iommu, iommuKernel: true, logLevel: process.env.VMM_LOG_LEVEL ?? 'warn' });
  try {
    const q = await QmpClient.connect(g.qmpPath);
    const count = async (): Promise<{ map: number; unmap: number }> => {
      const r = ((await q.cmd('query-iommu')).return as { mapRequests: number; unmapRequests: number }[])[0]!;
      return { map: r.mapRequests, unmap: r.unmapRequests };
    };
    const requests = {} as Record<Phase, { map: number; unmap: number }>;
    // A guest that fails before a marker ends the session: do not wait for the marker then.
    const marker = (m: string): Promise<void> => Promise.race([g.waitFor(m), g.done.then(() => { throw new Error(`the guest ended before printing ${m}:\n${g.output().slice(-2000)}`); })]);
    for (const p of PHASES) {
      await marker(`@@B ${p}@@`);
      const before = iommu ? await count() : null;
      await marker(`@@E ${p}@@`);
      if (before) {
        const after = await count();
        requests[p] = { map: after.map - before.map, unmap: after.unmap - before.unmap };
      }
    }
    await marker('@@END@@');
    q.close();
    const { status } = await g.done;
    const out = g.output();
    if (status !== 0 || !out.includes('IOERRORS=0')) throw new Error(`the ${iommu ? 'IOMMU' : 'plain'} guest failed (status ${status}):\n${out.slice(-2000)}`);
    const us = {} as Record<Phase, number>;
    for (const m of out.matchAll(/^T (\w+) ([\d.]+) ([\d.]+)$/gm)) us[m[1] as Phase] = (Number(m[3]) - Number(m[2])) * 1e6;
    return { us, requests: iommu ? requests : null };
  } finally {
    await g.attached.close();
  }
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { mib: { type: 'string', default: '32' } } });
  const mib = Number(values.mib);
  if (!Number.isInteger(mib) || mib < 1 || mib > 1024) throw new Error(`--mib ${values.mib}: expected an integer from 1 to 1024`);
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-iommu-'));
  try {
    const on = await run(true, mib, dir);
    const off = await run(false, mib, dir);
    // read4k reads a quarter of the disk (mib·64 blocks of 4 KiB).
    const bytes: Record<Phase, number> = { write1m: mib << 20, read1m: mib << 20, read4k: (mib << 20) / 4 };
    const ios: Record<Phase, number> = { write1m: mib, read1m: mib, read4k: mib * 64 };
    const mbps = (r: Run, k: Phase): number => bytes[k] / 1e6 / (r.us[k] / 1e6);
    const ratios = {} as Record<Phase, number>;
    let reqs = 0;
    let secs = 0;
    for (const k of PHASES) {
      ratios[k] = mbps(on, k) / mbps(off, k);
      const r = on.requests![k];
      reqs += r.map + r.unmap;
      secs += on.us[k] / 1e6;
      console.log(
        `${k}: IOMMU on ${mbps(on, k).toFixed(1)} MB/s, off ${mbps(off, k).toFixed(1)} MB/s, ratio ${ratios[k].toFixed(3)}; ` +
          `${r.map} MAP + ${r.unmap} UNMAP requests = ${((r.map + r.unmap) / ios[k]).toFixed(1)} per I/O, ${((r.map + r.unmap) / (on.us[k] / 1e6)).toFixed(0)}/s`,
      );
    }
    console.log(`vmm-iommu during the I/O: ${reqs} MAP+UNMAP requests in ${secs.toFixed(2)} s of I/O = ${(reqs / secs).toFixed(0)} requests/s`);
    const geo = Math.cbrt(ratios.write1m * ratios.read1m * ratios.read4k);
    console.log(JSON.stringify({ bench: 'iommu', mib, write1m_ratio: Number(ratios.write1m.toFixed(3)), read1m_ratio: Number(ratios.read1m.toFixed(3)), read4k_ratio: Number(ratios.read4k.toFixed(3)), iommu_rps: Math.round(reqs / secs), blk_ratio: Number(geo.toFixed(3)), net_ratio: null }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
