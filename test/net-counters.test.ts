// NIC faults checked against the guest's own counters, the guest's ethtool,
// and queue pairs disabled by QEMU as the front-end, end to end: a vmm VM
// (our vCPU, 2 queue pairs, ethtool from the guest kit's --package) and a
// QEMU guest (queues=2, its own vmm-net) on one vmm-switch.
//
// The vmm guest's script runs phases; at each one the test arms a fault
// (QMP inject-fault on the vmm guest's NIC) and then flaps the link
// (link-down, wait for the guest to see carrier 0, link-up) as the signal
// that the fault is in place. Both guests pin their neighbour with a static
// ARP entry and turn IPv6 off, so during a phase the only frames towards the
// vmm guest are the ones the phase sends for.
//
// * delay ms=300: the guest's ping RTT is at least 300 ms while it is armed
//   and falls back below that once cleared (ordering and a lower bound only).
// * drop rate=0.3: echo replies the guest's ICMP counters miss (OutEchos -
//   InEchoReps in /proc/net/snmp) = frames vmm-net dropped (query-nic-stats).
// * corrupt rate=0.3: the guest's InCsumErrors (Icmp + Tcp + Udp) = frames
//   vmm-net corrupted, and a 1 MiB TCP copy under it arrives intact.
// * ethtool -l / -L / -x / -S in the vmm guest: channel counts match the pairs.
// * QEMU's guest runs ethtool -L combined 2, then 1: vmm-net sees the second
//   pair's rings started, then stopped (SET_VRING_ENABLE 0 → stopQueue).
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DeviceProcess } from '@vmm/core';
import { buildExecArchive, ensureGuestPackages, ExecOutputFilter, guestPackagesArchive, QmpClient, silentReporter, startGuestSession, type GuestKit } from '@vmm/orchestrator';
import { kitAndInitramfs, NET_MAIN, netTestFile, qemuArgs, requireQemu, SWITCH_MAIN } from './guest-helpers.ts';

const SW = 'counters';
const MAC_V = '52:54:00:00:0c:0a';
const MAC_Q = '52:54:00:00:0c:0b';
const DELAY_MS = 300;
const { dir, log, env, procs } = netTestFile('net-counters', { runDirEnv: true });
let kit: GuestKit;
let initramfs: string;

beforeAll(async () => {
  ({ kit, initramfs } = await kitAndInitramfs());
});

/** Shell helpers both guests use. */
const COMMON = `
sysctl -q -w net.ipv6.conf.all.disable_ipv6=1; sysctl -q -w net.ipv6.conf.eth0.disable_ipv6=1
snmp() { awk -v p="$1:" -v f="$2" '$1==p { if (!h) { for (i=2;i<=NF;i++) if ($i==f) c=i; h=1 } else print $c }' /proc/net/snmp; }
`;

// The QEMU guest: the vmm guest's peer. It changes its queue pairs, then serves a file and waits for the end.
const PEER = `${COMMON}
arp -s 10.0.0.2 ${MAC_V}
ethtool -L eth0 combined 2 && echo "QL2 $(ethtool -l eth0 | tail -n 5 | tr '\\n' ' ')"
ethtool -L eth0 combined 1 && echo "QL1 $(ethtool -l eth0 | tail -n 5 | tr '\\n' ' ')"
echo @@QL1@@
echo 'dd if=/dev/zero bs=64k count=16 2>/dev/null' > /tmp/send.sh; chmod +x /tmp/send.sh
nc -l -p 5000 -e /tmp/send.sh
nc -l -p 5001 > /dev/null
echo peer-done
`;

const GUEST = `${COMMON}
arp -s 10.0.0.3 ${MAC_Q}
echo "@@L0@@"; ethtool -l eth0
ethtool -L eth0 combined 2 || exit 30
echo "@@L2@@"; ethtool -l eth0
echo "@@X@@"; ethtool -x eth0 2>&1
echo "@@S@@"; ethtool -S eth0; echo "@@S-END@@"
n=0; until ping -c 1 -W 2 10.0.0.3 > /dev/null; do n=$((n+1)); [ $n -gt 300 ] && exit 31; done
# Each phase: print its marker, wait for the carrier to go and come back (the test arms the fault meanwhile).
phase() { echo "@@$1@@"; n=0; while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; do n=$((n+1)); [ $n -gt 6000 ] && exit 32; sleep 0.1; done; echo "@@$1-DOWN@@"; n=0; while [ "$(cat /sys/class/net/eth0/carrier)" = 0 ]; do n=$((n+1)); [ $n -gt 6000 ] && exit 33; sleep 0.1; done; }
rtt() { ping -c 5 -i 0.4 -W 5 10.0.0.3 | grep round-trip; }
echo "BASE $(rtt)"
phase delay; echo "DELAYED $(rtt)"
phase undelay; echo "AFTER $(rtt)"
phase drop
o=$(snmp Icmp OutEchos); r=$(snmp Icmp InEchoReps)
ping -c 40 -i 0.2 -W 3 10.0.0.3 | grep transmitted
echo "DROPPED $(( $(snmp Icmp OutEchos) - o - ($(snmp Icmp InEchoReps) - r) ))"
phase undrop
csum() { echo $(( $(snmp Icmp InCsumErrors) + $(snmp Tcp InCsumErrors) + $(snmp Udp InCsumErrors) )); }
phase corrupt
c=$(csum)
ping -c 20 -i 0.2 -W 3 10.0.0.3 | grep transmitted
n=0; until nc 10.0.0.3 5000 > /tmp/r; do n=$((n+1)); [ $n -gt 60 ] && exit 34; sleep 1; done
echo "COPY $(wc -c < /tmp/r) $(sha256sum < /tmp/r | cut -c1-64) $(dd if=/dev/zero bs=64k count=16 2>/dev/null | sha256sum | cut -c1-64)"
echo "CSUMERR $(( $(csum) - c ))"
phase uncorrupt
n=0; until echo bye | nc 10.0.0.3 5001; do n=$((n+1)); [ $n -gt 60 ] && exit 35; sleep 1; done
echo guest-done
`;

/** QEMU in the background with its console collected as it comes (the peer's markers drive the test). */
function startQemu(args: string[], timeoutMs: number): { output: () => string; done: Promise<number | null> } {
  const child = spawn('qemu-system-riscv64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stdin.on('error', () => {});
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  return { output: () => out, done: new Promise((r) => child.on('close', (code) => { clearTimeout(timer); r(code); })) };
}

async function until(what: string, ok: () => boolean | Promise<boolean>, timeoutMs = 600_000): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const rtt = (line: string | undefined): { min: number; avg: number } => {
  const m = /round-trip min\/avg\/max = ([\d.]+)\/([\d.]+)\/([\d.]+) ms/.exec(line ?? '');
  if (!m) throw new Error(`no ping summary in ${JSON.stringify(line)}`);
  return { min: Number(m[1]), avg: Number(m[2]) };
};

interface NicStats { fault_dropped: number; fault_corrupted: number; fault_delayed: number; fault_delay_overflow: number; rx_packets: number }

describe('NIC faults against the guest\'s counters; ethtool; QEMU disabling a queue pair', () => {
  requireQemu();

  it('delay, drop and corrupt match what the guest measured and counted; channels match the pairs; QEMU\'s ethtool -L stops the pair in vmm-net', async () => {
    const sw = new DeviceProcess({ name: 'switch', args: [SWITCH_MAIN, '--name', SW], env, log });
    await sw.start();
    procs.push(sw);
    const peerNic = new DeviceProcess({ name: 'net-q', args: [NET_MAIN, '--socket', join(dir, 'q.sock'), '--switch', SW, '--mac', MAC_Q, '--id', 'q', '--queues', '2'], env, log });
    await peerNic.start();
    procs.push(peerNic);

    const e = buildExecArchive(PEER);
    const initrd = join(dir, 'initrd-q.cpio');
    writeFileSync(initrd, Buffer.concat([readFileSync(initramfs), guestPackagesArchive(await ensureGuestPackages(['ethtool'], silentReporter)), e.archive]));
    const qemu = startQemu([
      ...qemuArgs(kit, initrd, 1, 'console=ttyS0 panic=-1 quiet ip=10.0.0.3::10.0.0.1:255.255.255.0::eth0:off'),
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c,path=${join(dir, 'q.sock')}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=2',
      '-device', `virtio-net-pci,netdev=n,mac=${MAC_Q},mq=on,vectors=6,romfile=`,
    ], 850_000);

    const g = await startGuestSession({ cmd: GUEST, disks: [], nics: [`switch=${SW},mac=${MAC_V},queues=2`], packages: ['ethtool'], append: 'ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off' });
    const q = await QmpClient.connect(g.qmpPath);
    const stats = async (): Promise<NicStats> => {
      const r = (await q.cmd('query-nic-stats')) as { return: { device: string; stats: NicStats }[] };
      expect(r.return.map((x) => x.device)).toEqual(['net0']);
      return r.return[0]!.stats;
    };
    const fault = async (kind: string, args: Record<string, unknown> = {}) => expect(await q.cmd('inject-fault', { kind, device: 'net0', ...args })).toHaveProperty('return');
    /** At the guest's phase marker: arm the fault, then flap the link as the guest's go signal. */
    const phase = async (name: string, arm: () => Promise<void>): Promise<NicStats> => {
      await g.waitFor(`@@${name}@@`, 800_000);
      await arm();
      const before = await stats();
      await fault('link-down');
      await g.waitFor(`@@${name}-DOWN@@`);
      await fault('link-up');
      return before;
    };
    let dropped0: NicStats;
    let corrupt0: NicStats;
    try {
      // QEMU's guest went to 2 pairs and back to 1: vmm-net started the second pair's rings (2, 3) and stopped them again.
      await until('the QEMU guest\'s ethtool -L', () => qemu.output().includes('@@QL1@@'), 800_000);
      const qs = (await peerNic.request({ query: 'net-stats' })) as { pairsRunning: number[]; queueStarts: number[]; queueStops: number[] };
      expect(qs.pairsRunning, JSON.stringify(qs) + qemu.output().slice(-3000)).toEqual([0]);
      expect(qs.queueStarts.slice(2)).toEqual([1, 1]);
      expect(qs.queueStops.slice(2)).toEqual([1, 1]);
      expect(qs.queueStops.slice(0, 2)).toEqual([0, 0]);

      await phase('delay', () => fault('delay', { ms: DELAY_MS }));
      await phase('undelay', () => fault('delay', { ms: 0 }));
      await phase('drop', () => fault('drop', { rate: '0.3' }));
      dropped0 = await phase('undrop', () => fault('drop', { rate: '0' }));
      corrupt0 = await phase('corrupt', () => fault('corrupt', { rate: '0.3' }));
      const corrupt1 = await phase('uncorrupt', () => fault('corrupt', { rate: '0' }));
      const end = await stats();
      const out = g.output();

      // ethtool in the vmm guest: 2 combined channels at most, 1 in use at boot (one vCPU), 2 after -L; -x and -S see both.
      const section = (a: string, b: string) => out.slice(out.indexOf(`@@${a}@@`), out.indexOf(`@@${b}@@`));
      expect(section('L0', 'L2')).toMatch(/Pre-set maximums:[\s\S]*Combined:\s+2[\s\S]*Current hardware settings:[\s\S]*Combined:\s+1/);
      expect(section('L2', 'X')).toMatch(/Current hardware settings:[\s\S]*Combined:\s+2/);
      expect(section('X', 'S')).toMatch(/with 2 RX ring\(s\)/);
      const s = section('S', 'S-END');
      // Per-queue counters of virtio_net 6.12 (rxN_*, txN_*): one set per pair in use.
      expect(s).toMatch(/rx0_kicks: \d+/);
      expect(s).toMatch(/rx1_kicks: \d+/);
      expect(s).toMatch(/tx1_kicks: \d+/);
      expect(s).not.toMatch(/rx2_/);

      // delay: every delayed reply was held at least DELAY_MS; cleared, the RTT falls back below what it was under the delay.
      const base = rtt(/BASE (.*)/.exec(out)?.[1]);
      const delayed = rtt(/DELAYED (.*)/.exec(out)?.[1]);
      const after = rtt(/AFTER (.*)/.exec(out)?.[1]);
      expect(delayed.min).toBeGreaterThanOrEqual(DELAY_MS);
      expect(delayed.avg).toBeGreaterThan(base.avg);
      expect(after.avg).toBeLessThan(delayed.min);
      expect(dropped0.fault_delayed).toBeGreaterThanOrEqual(5);
      expect(dropped0.fault_delay_overflow).toBe(0);

      // drop: the replies the guest missed are exactly the frames vmm-net dropped.
      const missed = Number(/DROPPED (\d+)/.exec(out)?.[1]);
      expect(missed).toBeGreaterThan(0);
      expect(dropped0.fault_dropped).toBe(missed);

      // corrupt: every corrupted frame was caught by the guest's checksum validation, and TCP recovered the copy.
      const csumErrors = Number(/CSUMERR (\d+)/.exec(out)?.[1]);
      expect(corrupt1.fault_corrupted - corrupt0.fault_corrupted).toBeGreaterThan(0);
      expect(csumErrors).toBe(corrupt1.fault_corrupted - corrupt0.fault_corrupted);
      const copy = /COPY (\d+) ([0-9a-f]{64}) ([0-9a-f]{64})/.exec(out);
      expect(copy?.[1]).toBe(String(1 << 20));
      expect(copy?.[2]).toBe(copy?.[3]);
      expect(end.fault_corrupted).toBe(corrupt1.fault_corrupted);
      console.info(`net-counters: rtt base ${base.avg} ms, delayed min ${delayed.min} avg ${delayed.avg} ms (delay ${DELAY_MS} ms), after ${after.avg} ms; dropped ${missed} (guest) = ${dropped0.fault_dropped} (vmm-net); csum errors ${csumErrors} (guest) = ${corrupt1.fault_corrupted - corrupt0.fault_corrupted} (vmm-net)`);
    } finally {
      q.close();
    }
    const end = await g.done;
    expect(end.status, end.transcript.slice(-3000)).toBe(0);
    await qemu.done;
    let peer = '';
    new ExecOutputFilter(e.markers, (t) => (peer += t)).push(new TextEncoder().encode(qemu.output()));
    expect(peer).toContain('peer-done');
    // QEMU ran vhost-user with both pairs (each pair's vhost device adds guest RAM; a refusal made it fall back to its own virtio-net).
    expect(qemu.output()).not.toContain('falling back on userspace virtio');
    expect(qemu.output()).not.toContain('vhost_set_mem_table failed');
  });
});
