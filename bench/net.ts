// `pnpm bench net [--seconds S] [--tcp-seconds T] [--pps-only] [--busy-poll US] [--ring-kib N] [--ring N]`: networking, ours
// against a reference measured in the same run.
//  (a) packets per second, no guest in the way: DPDK testpmd (txonly,
//      64-byte UDP frames) → virtio_user → vmm-net → vmm-switch → vmm-net →
//      virtio_user → testpmd (rxonly), against testpmd txonly → virtio_user
//      → DPDK's own vhost back-end (net_vhost, rxonly) on the same cores.
//  (b) guest-to-guest TCP: two QEMU guests (TCG) run iperf3 (guest kit
//      --package) for T seconds through vmm-net + vmm-switch, against the same two guests
//      on taps joined by a Linux bridge (-netdev tap, in a network namespace
//      the benchmark makes and removes).
//  (c) the same iperf3 between two vmm guests (`vmm run --nic switch=…`),
//      printed against (b)'s reference; tcp_ratio stays (b)'s.
// (a) runs a second time with busy-poll on (--busy-poll US for the NICs and
// the switch, default 50; 0 skips it): pps_ratio_busy_poll. --ring-kib N sets
// the switch's rings (KiB) for both runs of ours, --ring N testpmd's queue
// size (virtio_user queue_size, --rxd/--txd) for every run.
// Also prints the RSS of vmm-net and vmm-switch during (a) next to a bare
// Node process. Last line: {"bench":"net","pps_ratio":…,"tcp_ratio":…}.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, DeviceProcess } from '@vmm/core';
import { buildExecArchive, ensureGuestPackages, ExecOutputFilter, guestPackagesArchive, silentReporter } from '@vmm/orchestrator';
import { querySwitch } from '@vmm/virtio-net';
import { haveTestpmd, startTestpmd } from '@vmm/virtio-net/testing';
import { argValue, prepareGuest, type Guest } from './_guest.ts';

const NET = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
const SWITCH = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));
const log = createLogger('net-bench', undefined, 'warn');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resident memory of a process without its shared-memory pages (RssShmem: the frame rings and guest RAM memfds it maps). */
function privateRssKiB(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
  return kb('VmRSS') - kb('RssShmem');
}

/** CPU time (user + system) a process used so far, in µs (/proc/PID/stat utime + stime, in clock ticks of 10 ms). */
function cpuMicros(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10_000;
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

/** A testpmd virtio_user port on a vhost-user socket; `ring` sets its queue size (virtio_user's default is 256). */
function virtioUser(path: string, mac: string, ring: number | undefined): string {
  return `net_virtio_user0,path=${path},queues=1,mac=${mac}${ring === undefined ? '' : `,queue_size=${ring}`}`;
}

async function ppsRun(seconds: number, txVdev: string, rxVdev: string, tag: string, ring: number | undefined): Promise<PpsResult> {
  const descs = ring === undefined ? [] : [`--rxd=${ring}`, `--txd=${ring}`];
  // Each instance forwards on its own core (its main lcore mostly sleeps): rx forwards on 0, tx on 1.
  const rx = startTestpmd({ prefix: `bnr${tag}${process.pid}`, vdev: rxVdev, mode: 'rxonly', lcores: '0,1', mainLcore: 1, extra: descs });

  await sleep(3000);
  const tx = startTestpmd({ prefix: `bnt${tag}${process.pid}`, vdev: txVdev, mode: 'txonly', lcores: '0,1', mainLcore: 0, extra: ['--txpkts=64', '--eth-peer=0,52:54:00:00:0b:0b', ...descs] });

  // Let the link come up and the first burst settle, then count over `seconds` on the receiving side only.
  await sleep(seconds * 1000 + 2000);
  const t = await tx.stop();
  const r = await rx.stop();
  if (r.rxPackets === 0) throw new Error(`${tag}: the receiving testpmd got nothing; its output:\n${rx.output().slice(-2000)}\ntx:\n${tx.output().slice(-2000)}`);
  return { pps: r.rxPackets / (seconds + 2), sent: t.txPackets, received: r.rxPackets };
}

/** Knobs of our side of (a): busy-poll µs for the NICs and the switch (0: off), and the switch's ring size in KiB. */
interface OursOptions {
  busyPollUs: number;
  ringKib: number | undefined;
  /** testpmd's virtio_user queue size (both runs, ours and the reference). */
  ring: number | undefined;
}

async function ppsOurs(seconds: number, o: OursOptions): Promise<PpsResult & { rss: { net: number; switch: number }; cpuPerFrame: Record<string, number> }> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-net-'));
  const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir };
  const procs: DeviceProcess[] = [];
  try {
    const poll = ['--busy-poll', String(o.busyPollUs)];
    const sw = await startProc('switch', [SWITCH, '--name', 'bench', ...poll, ...(o.ringKib === undefined ? [] : ['--ring-kib', String(o.ringKib)])], env, procs);
    const nets: DeviceProcess[] = [];
    for (const n of ['a', 'b']) nets.push(await startProc(`net-${n}`, [NET, '--socket', join(dir, `${n}.sock`), '--switch', 'bench', '--mac', `52:54:00:00:0b:0${n === 'a' ? 'a' : 'b'}`, '--id', n, ...poll], env, procs));
    let rss = { net: 0, switch: 0 };
    const sampler = setInterval(() => {
      rss = { net: Math.max(rss.net, privateRssKiB(nets[1]!.pid)), switch: Math.max(rss.switch, privateRssKiB(sw.pid)) };
    }, 500);
    const who = { 'net-a': nets[0]!, switch: sw, 'net-b': nets[1]! };
    const cpu0 = Object.fromEntries(Object.entries(who).map(([k, p]) => [k, cpuMicros(p.pid)]));
    const r = await ppsRun(seconds, virtioUser(join(dir, 'a.sock'), '52:54:00:00:0b:0a', o.ring), virtioUser(join(dir, 'b.sock'), '52:54:00:00:0b:0b', o.ring), 'o', o.ring);
    clearInterval(sampler);
    // CPU per frame each process handled: net-a and the switch per frame sent, net-b per frame received. Unlike pps it
    // hardly depends on how busy the machine is.
    const frames: Record<string, number> = { 'net-a': r.sent, switch: r.sent, 'net-b': r.received };
    const cpuPerFrame = Object.fromEntries(Object.entries(who).map(([k, p]) => [k, Number(((cpuMicros(p.pid) - cpu0[k]!) / Math.max(1, frames[k]!)).toFixed(2))]));
    const st = await querySwitch(join(dir, 'switch-bench.sock'));
    const b = st.ports.find((p) => p.name === 'b');
    console.log(`  switch: port b forwarded ${b?.tx_packets} frames, dropped ${b?.tx_dropped} (its ring full)`);
    console.log(`  CPU µs per frame: ${Object.entries(cpuPerFrame).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    return { ...r, rss, cpuPerFrame };
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function ppsReference(seconds: number, ring: number | undefined): Promise<PpsResult> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-net-ref-'));
  try {
    const sock = join(dir, 'vhost.sock');
    return await ppsRun(seconds, virtioUser(sock, '52:54:00:00:0b:0a', ring), `net_vhost0,iface=${sock},queues=1`, 'r', ring);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function bareNodeRss(): number {
  const out = execFileSync(process.execPath, ['-e', 'setTimeout(() => { console.log(require("fs").readFileSync("/proc/self/status", "utf8")); }, 200)']).toString();
  return Number(/VmRSS:\s+(\d+) kB/.exec(out)?.[1] ?? NaN);
}

// ---- (b) TCP between two QEMU guests ----

// iperf3 (a Debian package with its closure, appended to the initramfs) for 8 s; the receiver's side reports.
const SERVER = 'iperf3 -s -1 -f m > /tmp/s.log 2>&1; grep -E "receiver" /tmp/s.log || tail -n 5 /tmp/s.log';
const client = (peer: string, seconds: number) => `n=0; until iperf3 -c ${peer} -t ${seconds} -f m > /tmp/c.log 2>&1; do n=$((n+1)); [ $n -gt 90 ] && { cat /tmp/c.log; exit 30; }; sleep 1; done; grep -E "sender|receiver" /tmp/c.log`;

async function qemuGuest(g: Guest, dir: string, name: string, ip: string, script: string, netArgs: string[], prefix: string[] = []): Promise<string> {
  const x = buildExecArchive(script);
  const initrd = join(dir, `initrd-${name}.cpio`);
  writeFileSync(initrd, Buffer.concat([readFileSync(g.initramfs), guestPackagesArchive(await ensureGuestPackages(['iperf3'], silentReporter)), x.archive]));
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

function mbitPerS(clientOutput: string): number {
  const m = /([\d.]+) Mbits\/sec.*receiver/.exec(clientOutput);
  if (!m) throw new Error(`no iperf3 receiver line in the client's output: ${clientOutput}`);
  return Number(m[1]);
}

async function tcpOurs(g: Guest, seconds: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-tcp-'));
  const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir };
  const procs: DeviceProcess[] = [];
  try {
    await startProc('switch', [SWITCH, '--name', 'tcp'], env, procs);
    const net = (n: string, mac: string) => ['-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem', '-chardev', `socket,id=c,path=${join(dir, `${n}.sock`)}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=1', '-device', `virtio-net-pci,netdev=n,mac=${mac},romfile=`];
    for (const n of ['a', 'b']) await startProc(`net-${n}`, [NET, '--socket', join(dir, `${n}.sock`), '--switch', 'tcp', '--mac', `52:54:00:00:0c:0${n === 'a' ? 'a' : 'b'}`, '--id', n], env, procs);
    const [, tx] = await Promise.all([
      qemuGuest(g, dir, 'b', '10.0.0.3', SERVER, net('b', '52:54:00:00:0c:0b')),
      qemuGuest(g, dir, 'a', '10.0.0.2', client('10.0.0.3', seconds), net('a', '52:54:00:00:0c:0a')),
    ]);
    return mbitPerS(tx);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

async function tcpBridge(g: Guest, seconds: number): Promise<number> {
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
    const [, tx] = await Promise.all([
      qemuGuest(g, dir, 'b', '10.0.0.3', SERVER, net('tapb', '52:54:00:00:0d:0b'), inNs),
      qemuGuest(g, dir, 'a', '10.0.0.2', client('10.0.0.3', seconds), net('tapa', '52:54:00:00:0d:0a'), inNs),
    ]);
    return mbitPerS(tx);
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
    rmSync(dir, { recursive: true, force: true });
  }
}

const CLI = fileURLToPath(new URL('../packages/orchestrator/src/cli.ts', import.meta.url));

/** `vmm run --initrd BASE+iperf3 --nic switch=… --exec CMD`: our whole stack, vCPU included. */
function vmmGuest(initrd: string, runDir: string, ip: string, mac: string, script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'run', '--mem', '512M', '--initrd', initrd, '--nic', `switch=tcpvmm,mac=${mac}`, '--append', `ip=${ip}::10.0.0.1:255.255.255.0::eth0:off`, '--exec', script], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMM_RUN_DIR: runDir },
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 600_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`vmm guest ${ip} exited ${code}: ${out.slice(-1500)} ${err.slice(-1500)}`));
    });
  });
}

async function tcpVmm(g: Guest, seconds: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-tcpvmm-'));
  const procs: DeviceProcess[] = [];
  try {
    await startProc('switch', [SWITCH, '--name', 'tcpvmm'], { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir }, procs);
    const initrd = join(dir, 'initrd.cpio');
    writeFileSync(initrd, Buffer.concat([readFileSync(g.initramfs), guestPackagesArchive(await ensureGuestPackages(['iperf3'], silentReporter))]));
    const [, tx] = await Promise.all([
      vmmGuest(initrd, dir, '10.0.0.3', '52:54:00:00:0e:0b', SERVER),
      vmmGuest(initrd, dir, '10.0.0.2', '52:54:00:00:0e:0a', client('10.0.0.3', seconds)),
    ]);
    return mbitPerS(tx);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function main(args: string[]): Promise<void> {
  const seconds = argValue(args, '--seconds', 8);
  const tcpSeconds = argValue(args, '--tcp-seconds', 8);
  const busyPollUs = args[args.indexOf('--busy-poll') + 1] === '0' ? 0 : argValue(args, '--busy-poll', 50);
  const ringKibArg = argValue(args, '--ring-kib', 0);
  const ringKib = ringKibArg > 0 ? ringKibArg : undefined;
  const ringArg = argValue(args, '--ring', 0);
  const ring = ringArg > 0 ? ringArg : undefined;
  if (!haveTestpmd()) throw new Error('dpdk-testpmd not found: scripts/setup.sh installs dpdk-dev and its PMDs');
  console.log(`(a) 64-byte frames, testpmd txonly → rxonly, ${seconds} s each`);
  const ours = await ppsOurs(seconds, { busyPollUs: 0, ringKib, ring });
  console.log(`  vmm-net + vmm-switch + vmm-net: ${Math.round(ours.pps)} pps received (${ours.received} of ${ours.sent} sent)`);
  const ref = await ppsReference(seconds, ring);
  console.log(`  DPDK net_vhost:                 ${Math.round(ref.pps)} pps received (${ref.received} of ${ref.sent} sent)`);
  let busyRatio: number | null = null;
  if (busyPollUs > 0) {
    const busy = await ppsOurs(seconds, { busyPollUs, ringKib, ring });
    console.log(`  the same, busy-poll ${busyPollUs} µs:  ${Math.round(busy.pps)} pps received (${busy.received} of ${busy.sent} sent), ${(busy.pps / ours.pps).toFixed(2)} × without`);
    busyRatio = busy.pps / ref.pps;
  }
  const bare = bareNodeRss();
  console.log(`  RSS without shared memfd pages (peak): vmm-net ${(ours.rss.net / 1024).toFixed(1)} MiB, vmm-switch ${(ours.rss.switch / 1024).toFixed(1)} MiB; a bare node ${(bare / 1024).toFixed(1)} MiB`);
  const ppsRatio = ours.pps / ref.pps;
  let tcpRatio: number | null = null;
  if (!args.includes('--pps-only')) {
    const g = await prepareGuest();
    console.log(`(b) TCP, iperf3 -t ${tcpSeconds} between two QEMU guests`);
    const t1 = await tcpOurs(g, tcpSeconds);
    console.log(`  vmm-net + vmm-switch:  ${t1.toFixed(1)} Mbit/s`);
    const t2 = await tcpBridge(g, tcpSeconds);
    console.log(`  Linux bridge + taps:   ${t2.toFixed(1)} Mbit/s`);
    tcpRatio = t1 / t2;
    console.log(`(c) TCP, iperf3 -t ${tcpSeconds} between two vmm guests (vmm run --nic switch=…)`);
    const t3 = await tcpVmm(g, tcpSeconds);
    console.log(`  vmm guests, vmm-net + vmm-switch: ${t3.toFixed(1)} Mbit/s (${(t3 / t2).toFixed(2)} × the QEMU guests on a Linux bridge)`);
  }
  console.log(JSON.stringify({ bench: 'net', pps_ratio: Number(ppsRatio.toFixed(3)), pps_ratio_busy_poll: busyRatio === null ? null : Number(busyRatio.toFixed(3)), tcp_ratio: tcpRatio === null ? null : Number(tcpRatio.toFixed(3)) }));
}
