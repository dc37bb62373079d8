// `pnpm bench net [--seconds S] [--mib M] [--pps-only]`: networking, ours
// against a reference measured in the same run.
//  (a) packets per second, no guest in the way: DPDK testpmd (txonly,
//      64-byte UDP frames) → virtio_user → vmm-net → vmm-switch → vmm-net →
//      virtio_user → testpmd (rxonly), against testpmd txonly → virtio_user
//      → DPDK's own vhost back-end (net_vhost, rxonly) on the same cores.
//  (b) guest-to-guest TCP: two QEMU guests (TCG) copy M MiB over TCP with
//      busybox nc through vmm-net + vmm-switch, against the same two guests
//      on taps joined by a Linux bridge (-netdev tap, in a network namespace
//      the benchmark makes and removes).
// (c) two vmm guests is not measured yet (needs `vmm run --nic`).
// Also prints the RSS of vmm-net and vmm-switch during (a) next to a bare
// Node process. Last line: {"bench":"net","pps_ratio":…,"tcp_ratio":…}.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, DeviceProcess } from '@vmm/core';
import { ExecOutputFilter, initrdWithExec } from '@vmm/orchestrator';
import { querySwitch } from '@vmm/virtio-net';
import { haveTestpmd, startTestpmd } from '@vmm/virtio-net/testing';
import { argValue, prepareGuest, type Guest } from './_guest.ts';

const NET = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
const SWITCH = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));
const log = createLogger('bench', 'net', 'warn');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resident memory of a process without its shared-memory pages (RssShmem: the frame rings and guest RAM memfds it maps). */
function privateRssKiB(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
  return kb('VmRSS') - kb('RssShmem');
}

async function startProc(name: string, args: string[], env: Record<string, string>, procs: DeviceProcess[]): Promise<DeviceProcess> {
  const p = new DeviceProcess({ name, args, env, log });
  await p.start();
  procs.push(p);
  return p;
}





interface PpsResult {
  pps: number;
  sent: number;
  received: number;
}

async function ppsRun(seconds: number, txVdev: string, rxVdev: string, tag: string): Promise<PpsResult> {
  // Each instance forwards on its own core (its main lcore mostly sleeps): rx forwards on 0, tx on 1.
  const rx = startTestpmd({ prefix: `bnr${tag}${process.pid}`, vdev: rxVdev, mode: 'rxonly', lcores: '0,1', mainLcore: 1 });

  await sleep(3000);
  const tx = startTestpmd({ prefix: `bnt${tag}${process.pid}`, vdev: txVdev, mode: 'txonly', lcores: '0,1', mainLcore: 0, extra: ['--txpkts=64', '--eth-peer=0,52:54:00:00:0b:0b'] });

  // Let the link come up and the first burst settle, then count over `seconds` on the receiving side only.
  await sleep(seconds * 1000 + 2000);
  const t = await tx.stop();
  const r = await rx.stop();
  if (r.rxPackets === 0) throw new Error(`${tag}: the receiving testpmd got nothing; its output:\n${rx.output().slice(-2000)}\ntx:\n${tx.output().slice(-2000)}`);
  return { pps: r.rxPackets / (seconds + 2), sent: t.txPackets, received: r.rxPackets };
}

async function ppsOurs(seconds: number): Promise<PpsResult & { rss: { net: number; switch: number } }> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-net-'));
  const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir };
  const procs: DeviceProcess[] = [];
  try {
    const sw = await startProc('switch', [SWITCH, '--name', 'bench'], env, procs);
    const nets: DeviceProcess[] = [];
    for (const n of ['a', 'b']) nets.push(await startProc(`net-${n}`, [NET, '--socket', join(dir, `${n}.sock`), '--switch', 'bench', '--mac', `52:54:00:00:0b:0${n === 'a' ? 'a' : 'b'}`, '--id', n], env, procs));
    let rss = { net: 0, switch: 0 };
    const sampler = setInterval(() => {
      rss = { net: Math.max(rss.net, privateRssKiB(nets[1]!.pid)), switch: Math.max(rss.switch, privateRssKiB(sw.pid)) };
    }, 500);
    const r = await ppsRun(seconds, `net_virtio_user0,path=${join(dir, 'a.sock')},queues=1,mac=52:54:00:00:0b:0a`, `net_virtio_user0,path=${join(dir, 'b.sock')},queues=1,mac=52:54:00:00:0b:0b`, 'o');
    clearInterval(sampler);
    const st = await querySwitch(join(dir, 'switch-bench.sock'));
    const b = st.ports.find((p) => p.name === 'b');
    console.log(`  switch: port b forwarded ${b?.tx_packets} frames, dropped ${b?.tx_dropped} (its ring full)`);
    return { ...r, rss };
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function ppsReference(seconds: number): Promise<PpsResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-net-ref-'));
  try {
    const sock = join(dir, 'vhost.sock');
    return await ppsRun(seconds, `net_virtio_user0,path=${sock},queues=1,mac=52:54:00:00:0b:0a`, `net_vhost0,iface=${sock},queues=1`, 'r');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function bareNodeRss(): number {
  const out = execFileSync(process.execPath, ['-e', 'setTimeout(() => { console.log(require("fs").readFileSync("/proc/self/status", "utf8")); }, 200)']).toString();
  return Number(/VmRSS:\s+(\d+) kB/.exec(out)?.[1] ?? NaN);
}

// ---- (b) TCP between two QEMU guests ----

const receiver = (peer: string) => `
printf '%s\\n' 'read t0 x < /proc/uptime; wc -c > /tmp/n; read t1 x < /proc/uptime; echo "$t0 $t1" > /tmp/t' > /tmp/rx.sh; chmod +x /tmp/rx.sh
ping -c 1 -W 30 ${peer} > /dev/null
nc -l -p 5000 -e /tmp/rx.sh
echo "tcp $(cat /tmp/n) $(cat /tmp/t)"
`;
const sender = (peer: string, mib: number) => `
ping -c 2 -W 30 ${peer} > /dev/null || exit 21
n=0; until dd if=/dev/zero bs=64k count=${mib * 16} 2>/dev/null | nc ${peer} 5000; do n=$((n+1)); [ $n -gt 60 ] && exit 22; sleep 1; done
n=0; while netstat -tn | grep ':5000 ' | grep -qE 'ESTABLISHED|FIN_WAIT1|CLOSING|LAST_ACK'; do n=$((n+1)); [ $n -gt 900 ] && exit 23; sleep 0.2; done
`;

async function qemuGuest(g: Guest, dir: string, name: string, ip: string, script: string, netArgs: string[], prefix: string[] = []): Promise<string> {
  const x = await initrdWithExec(g.initramfs, script);
  const initrd = join(dir, `initrd-${name}.cpio`);
  writeFileSync(initrd, x.initrd);
  const args = [
    '-M', 'virt', '-m', '512M', '-smp', '1', '-nographic', '-no-reboot', '-bios', g.kit.opensbi.fwDynamic, '-kernel', g.kit.kernel, '-initrd', initrd,
    '-append', `console=ttyS0 panic=-1 quiet ip=${ip}::10.0.0.1:255.255.255.0::eth0:off`, ...netArgs,
  ];
  const cmd = prefix.length > 0 ? prefix[0]! : 'qemu-system-riscv64';
  const child = spawn(cmd, prefix.length > 0 ? [...prefix.slice(1), 'qemu-system-riscv64', ...args] : args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  let raw = '';
  const f = new ExecOutputFilter(x.markers, (t) => (output += t));
  child.stdout.on('data', (b: Buffer) => {
    raw += b.toString();
    f.push(new Uint8Array(b));
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
  await new Promise((r) => child.once('close', r));
  clearTimeout(timer);
  if (f.status !== 0) throw new Error(`guest ${name} failed (status ${f.status}): ${raw.slice(-2000)}`);
  return output;
}

function mbitPerS(receiverOutput: string): number {
  const m = /tcp (\d+) ([\d.]+) ([\d.]+)/.exec(receiverOutput);
  if (!m) throw new Error(`no tcp line in the receiver's output: ${receiverOutput}`);
  return (Number(m[1]) * 8) / (Number(m[3]) - Number(m[2])) / 1e6;
}

async function tcpOurs(g: Guest, mib: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-tcp-'));
  const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir };
  const procs: DeviceProcess[] = [];
  try {
    await startProc('switch', [SWITCH, '--name', 'tcp'], env, procs);
    const net = (n: string, mac: string) => ['-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem', '-chardev', `socket,id=c,path=${join(dir, `${n}.sock`)}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=1', '-device', `virtio-net-pci,netdev=n,mac=${mac},romfile=`];
    for (const n of ['a', 'b']) await startProc(`net-${n}`, [NET, '--socket', join(dir, `${n}.sock`), '--switch', 'tcp', '--mac', `52:54:00:00:0c:0${n === 'a' ? 'a' : 'b'}`, '--id', n], env, procs);
    const [rx] = await Promise.all([
      qemuGuest(g, dir, 'b', '10.0.0.3', receiver('10.0.0.2'), net('b', '52:54:00:00:0c:0b')),
      qemuGuest(g, dir, 'a', '10.0.0.2', sender('10.0.0.3', mib), net('a', '52:54:00:00:0c:0a')),
    ]);
    return mbitPerS(rx);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function tcpBridge(g: Guest, mib: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-br-'));
  const ns = `vmmbr${process.pid}`;
  const nsx = (...a: string[]) => execFileSync('ip', ['netns', 'exec', ns, ...a]);
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    nsx('ip', 'link', 'add', 'br0', 'type', 'bridge');
    nsx('ip', 'link', 'set', 'br0', 'up');
    for (const t of ['tapa', 'tapb']) {
      nsx('ip', 'tuntap', 'add', t, 'mode', 'tap');
      nsx('ip', 'link', 'set', t, 'master', 'br0');
      nsx('ip', 'link', 'set', t, 'up');
    }
    const net = (t: string, mac: string) => ['-netdev', `tap,id=n,ifname=${t},script=no,downscript=no`, '-device', `virtio-net-pci,netdev=n,mac=${mac},romfile=`];
    const inNs = ['ip', 'netns', 'exec', ns];
    const [rx] = await Promise.all([
      qemuGuest(g, dir, 'b', '10.0.0.3', receiver('10.0.0.2'), net('tapb', '52:54:00:00:0d:0b'), inNs),
      qemuGuest(g, dir, 'a', '10.0.0.2', sender('10.0.0.3', mib), net('tapa', '52:54:00:00:0d:0a'), inNs),
    ]);
    return mbitPerS(rx);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function main(args: string[]): Promise<void> {
  const seconds = argValue(args, '--seconds', 8);
  const mib = argValue(args, '--mib', 16);
  if (!haveTestpmd()) throw new Error('dpdk-testpmd not found: scripts/setup.sh installs dpdk-dev and its PMDs');
  console.log(`(a) 64-byte frames, testpmd txonly → rxonly, ${seconds} s each`);
  const ours = await ppsOurs(seconds);
  console.log(`  vmm-net + vmm-switch + vmm-net: ${Math.round(ours.pps)} pps received (${ours.received} of ${ours.sent} sent)`);
  const ref = await ppsReference(seconds);
  console.log(`  DPDK net_vhost:                 ${Math.round(ref.pps)} pps received (${ref.received} of ${ref.sent} sent)`);
  const bare = bareNodeRss();
  console.log(`  RSS without shared memfd pages (peak): vmm-net ${(ours.rss.net / 1024).toFixed(1)} MiB, vmm-switch ${(ours.rss.switch / 1024).toFixed(1)} MiB; a bare node ${(bare / 1024).toFixed(1)} MiB`);
  const ppsRatio = ours.pps / ref.pps;
  let tcpRatio: number | null = null;
  if (!args.includes('--pps-only')) {
    const g = await prepareGuest();
    console.log(`(b) TCP, ${mib} MiB between two QEMU guests (busybox nc)`);
    const t1 = await tcpOurs(g, mib);
    console.log(`  vmm-net + vmm-switch:  ${t1.toFixed(1)} Mbit/s`);
    const t2 = await tcpBridge(g, mib);
    console.log(`  Linux bridge + taps:   ${t2.toFixed(1)} Mbit/s`);
    tcpRatio = t1 / t2;
  }
  console.log(JSON.stringify({ bench: 'net', pps_ratio: Number(ppsRatio.toFixed(3)), tcp_ratio: tcpRatio === null ? null : Number(tcpRatio.toFixed(3)) }));
}
