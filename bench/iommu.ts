// `pnpm bench iommu [--mib N] [--net-mib M] [--net-rounds R] [--net-only]`: the disk and the
// NIC with the IOMMU on and off, in the same run. Guests with the IOMMU
// kernel both times, so only the IOMMU differs: one with `--iommu` (vmm-blk
// and vmm-net translate every DMA address through vmm-iommu's table, the
// guest maps and unmaps every buffer in strict mode), one without.
// Disk: inside each guest N MiB of 1 MiB O_DIRECT writes and reads, and
// 4 KiB O_DIRECT reads (QD1: busybox has no fio), timed by the guest; how
// many MAP/UNMAP requests reached vmm-iommu per second of I/O.
// Net: the guest (`--nic switch=…`) sends M MiB over TCP (busybox nc) to a
// QEMU guest (stock kernel, vhost-user NIC on a vmm-net) on a vmm-switch the
// benchmark starts — traffic only inside the switch; the sender times it
// from connect to its last byte acknowledged; the receiver's sha256 must
// match. The NIC endpoint's MAP/UNMAP counts (query-iommu) for the on run.
// --net-rounds R (default 3) alternates on and off R times and counts each
// side's fastest copy (the machine is shared; its load drifts).
// Last line: {"bench":"iommu","blk_ratio":…,"net_ratio":…} (on ÷ off, MB/s;
// blk_ratio is null with --net-only).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLogger, DeviceProcess } from '@vmm/core';
import { QmpClient, startGuestSession } from '@vmm/orchestrator';
import { MEM, prepareGuest, runQemu, type Guest } from './_guest.ts';

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

const NET = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
const SWITCH = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));

// The QEMU receiver: a probe connection on 5000 (so that the timed one on
// 5001 never waits for a retry: 5001 listens before 5000 does), then the
// file on 5001; prints its size and sha256.
const RECEIVER = `
echo 'cat > /dev/null' > /tmp/probe.sh; echo 'cat > /tmp/f' > /tmp/rx.sh; chmod +x /tmp/probe.sh /tmp/rx.sh
nc -l -p 5001 -e /tmp/rx.sh &
nc -l -p 5000 -e /tmp/probe.sh
wait
echo "received $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
`;

// The vmm sender: M MiB of random data, ping until the peer is up, probe
// until it listens, then the timed copy: from connect until the last byte is
// acknowledged (the connection leaves ESTABLISHED/FIN_WAIT1, checked every 50 ms).
const sender = (mib: number): string => `
dd if=/dev/urandom of=/tmp/f bs=1M count=${mib} 2>/dev/null
echo "sent $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
n=0; until ping -c 1 -W 1 10.0.0.3 > /dev/null; do n=$((n+1)); [ $n -gt 300 ] && { echo "no ping reply"; exit 21; }; sleep 1; done
n=0; until echo probe | nc 10.0.0.3 5000; do n=$((n+1)); [ $n -gt 300 ] && exit 22; sleep 1; done
echo "@@B net@@"; sleep 1
s=$(cut -d' ' -f1 /proc/uptime)
nc 10.0.0.3 5001 < /tmp/f || exit 24
n=0; while netstat -tn | grep ':5001 ' | grep -qE 'ESTABLISHED|FIN_WAIT1|CLOSING|LAST_ACK'; do n=$((n+1)); [ $n -gt 6000 ] && exit 23; sleep 0.05; done
echo "T net $s $(cut -d' ' -f1 /proc/uptime)"
echo "@@E net@@"; sleep 1
echo @@END@@
`;

interface NetRun {
  us: number;
  /** The NIC endpoint's MAP and UNMAP requests during the copy, when the IOMMU is on. */
  requests: { endpoint: number; map: number; unmap: number } | null;
}

interface EndpointRow { id: number; domain: number | null; maps: number; unmaps: number }

async function netRun(iommu: boolean, mib: number, dir: string, peerGuest: Guest): Promise<NetRun> {
  const tag = `${iommu ? 'on' : 'off'}`;
  const sw = `bi${tag}${process.pid}`;
  const runDir = join(dir, `net-${tag}`);
  mkdirSync(runDir, { recursive: true });
  const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: runDir };
  const log = createLogger('iommu-bench', undefined, 'warn');
  const procs: DeviceProcess[] = [];
  try {
    for (const [name, args] of [['switch', [SWITCH, '--name', sw]], ['net-peer', [NET, '--socket', join(runDir, 'peer.sock'), '--switch', sw, '--mac', '52:54:00:00:1f:03', '--id', 'peer']]] as const) {
      const p = new DeviceProcess({ name, args: [...args], env, log });
      await p.start();
      procs.push(p);
    }
    const g = await startGuestSession({
      cmd: sender(mib), disks: [], iommu, iommuKernel: true,
      nics: [`switch=${join(runDir, `switch-${sw}.sock`)},mac=52:54:00:00:1f:02`],
      append: 'ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off',
      logLevel: process.env.VMM_LOG_LEVEL ?? 'warn',
    });
    const stopPeer = new AbortController();
    const peer = runQemu(peerGuest, RECEIVER, 'received', 1_200_000, {
      signal: stopPeer.signal,
      append: 'ip=10.0.0.3::10.0.0.1:255.255.255.0::eth0:off',
      args: ['-object', `memory-backend-memfd,id=mem,size=${MEM},share=on`, '-numa', 'node,memdev=mem',
        '-chardev', `socket,id=c,path=${join(runDir, 'peer.sock')}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=1',
        '-device', 'virtio-net-pci,netdev=n,mac=52:54:00:00:1f:03,romfile='],
    });
    let copied = false;
    try {
      const q = await QmpClient.connect(g.qmpPath);
      const rows = async (): Promise<EndpointRow[]> => ((await q.cmd('query-iommu')).return as { endpoints: EndpointRow[] }[])[0]!.endpoints;
      const marker = (m: string): Promise<void> => Promise.race([g.waitFor(m, 1_200_000), g.done.then(() => { throw new Error(`the ${tag} guest ended before printing ${m}:\n${g.output().slice(-2000)}`); })]);
      await marker('@@B net@@');
      const before = iommu ? await rows() : null;
      await marker('@@E net@@');
      let requests: NetRun['requests'] = null;
      if (before) {
        // The NIC is the VM's only device: the endpoint whose MAP count moved.
        const after = await rows();
        const d = after.map((e) => { const b = before.find((x) => x.id === e.id); return { endpoint: e.id, map: e.maps - (b?.maps ?? 0), unmap: e.unmaps - (b?.unmaps ?? 0) }; });
        requests = d.reduce((a, b) => (b.map > a.map ? b : a));
      }
      await marker('@@END@@');
      q.close();
      const { status } = await g.done;
      const out = g.output();
      if (status !== 0) throw new Error(`the ${tag} sender failed (status ${status}):\n${out.slice(-2000)}`);
      const p = await peer;
      copied = true;
      const sent = /sent (\d+) ([0-9a-f]{64})/.exec(out);
      const got = /received (\d+) ([0-9a-f]{64})/.exec(p.output);
      if (!sent || !got || sent[1] !== got[1] || sent[2] !== got[2]) throw new Error(`the ${tag} copy does not match: sent ${sent?.slice(1).join(' ')}, received ${got?.slice(1).join(' ')}`);
      const t = /^T net ([\d.]+) ([\d.]+)$/m.exec(out)!;
      return { us: (Number(t[2]) - Number(t[1])) * 1e6, requests };
    } finally {
      await g.attached.close();
      // A sender that failed leaves its receiver waiting: do not wait out its deadline.
      if (!copied) stopPeer.abort();
      await peer.catch(() => undefined);
    }
  } finally {
    // The NIC before its switch (the other way round it reports the switch gone and reconnects).
    for (const p of procs.reverse()) await p.stop();
  }
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { mib: { type: 'string', default: '32' }, 'net-mib': { type: 'string', default: '8' }, 'net-only': { type: 'boolean', default: false }, 'net-rounds': { type: 'string', default: '3' } } });
  const mib = Number(values.mib);
  if (!Number.isInteger(mib) || mib < 1 || mib > 1024) throw new Error(`--mib ${values.mib}: expected an integer from 1 to 1024`);
  const netMib = Number(values['net-mib']);
  if (!Number.isInteger(netMib) || netMib < 1 || netMib > 256) throw new Error(`--net-mib ${values['net-mib']}: expected an integer from 1 to 256`);
  const rounds = Number(values['net-rounds']);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error(`--net-rounds ${values['net-rounds']}: expected an integer from 1 to 20`);
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-iommu-'));
  try {
    let blk: Record<string, number> | null = null;
    if (!values['net-only']) {
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
      blk = { mib, write1m_ratio: Number(ratios.write1m.toFixed(3)), read1m_ratio: Number(ratios.read1m.toFixed(3)), read4k_ratio: Number(ratios.read4k.toFixed(3)), iommu_rps: Math.round(reqs / secs), blk_ratio: Number(geo.toFixed(3)) };
    }
    const peer = await prepareGuest();
    // Rounds alternate on and off (the machine is shared: its load drifts); each side's fastest round counts.
    const netMbps = (r: NetRun): number => (netMib << 20) / 1e6 / (r.us / 1e6);
    const ons: NetRun[] = [];
    const offs: NetRun[] = [];
    for (let i = 0; i < rounds; i++) {
      ons.push(await netRun(true, netMib, join(dir, `r${i}`), peer));
      offs.push(await netRun(false, netMib, join(dir, `r${i}`), peer));
    }
    const best = (rs: NetRun[]): NetRun => rs.reduce((a, b) => (b.us < a.us ? b : a));
    const netOn = best(ons);
    const netOff = best(offs);
    console.log(`net rounds (MB/s): on ${ons.map((r) => netMbps(r).toFixed(2)).join(' ')}, off ${offs.map((r) => netMbps(r).toFixed(2)).join(' ')}`);
    const netRatio = netMbps(netOn) / netMbps(netOff);
    const nr = netOn.requests!;
    const netRps = (nr.map + nr.unmap) / (netOn.us / 1e6);
    console.log(
      `net TCP ${netMib} MiB: IOMMU on ${netMbps(netOn).toFixed(2)} MB/s, off ${netMbps(netOff).toFixed(2)} MB/s, ratio ${netRatio.toFixed(3)}; ` +
        `NIC endpoint ${nr.endpoint}: ${nr.map} MAP + ${nr.unmap} UNMAP requests = ${((nr.map + nr.unmap) / netMib).toFixed(0)} per MiB, ${netRps.toFixed(0)}/s`,
    );
    console.log(JSON.stringify({
      bench: 'iommu', ...(blk ?? { blk_ratio: null }), net_mib: netMib, net_map: nr.map, net_unmap: nr.unmap, net_iommu_rps: Math.round(netRps), net_ratio: Number(netRatio.toFixed(3)),
    }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
