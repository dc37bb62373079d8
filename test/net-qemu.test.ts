// End-to-end: two real QEMU guests (`qemu-system-riscv64 -M virt`, TCG, the
// Debian kernel) whose virtio-net-pci NICs are vhost-user front-ends of our
// vmm-net processes, both attached to one vmm-switch. The guest kit's init
// configures eth0 from the kernel's ip= argument; the guests ping each
// other and copy 4 MiB of random data over TCP, checked with sha256 on both
// sides. Bounded deadlines, no timing assertions.
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DeviceProcess } from '@vmm/core';
import { buildExecArchive, ensureGuestPackages, ExecOutputFilter, guestPackagesArchive, initrdWithExec, silentReporter, type GuestKit } from '@vmm/orchestrator';
import { readFileSync } from 'node:fs';
import { querySwitch } from '@vmm/virtio-net';
import { writeFileSync } from 'node:fs';
import { kitAndInitramfs, NET_MAIN, netTestFile, qemuArgs, requireQemu, runBounded, SWITCH_MAIN, tcpReceiverScript, tcpSenderScript } from './guest-helpers.ts';

const { dir, log, env, procs } = netTestFile('net-qemu');
let kit: GuestKit;
let initramfs: string;

beforeAll(async () => {
  ({ kit, initramfs } = await kitAndInitramfs());
});

const RECEIVER = tcpReceiverScript({ from: '10.0.0.2', waitS: 20 });
const sender = (blocks: number): string => tcpSenderScript({ to: '10.0.0.3', blocks, pingWaitS: 20, tries: 60, drainTicks: 600 });

async function guest(name: string, ip: string, mac: string, script: string, packages: string[] = []): Promise<{ output: string; status: number | null; transcript: string }> {
  let x: { initrd: Uint8Array; markers: { begin: string; end: string } };
  if (packages.length === 0) x = await initrdWithExec(initramfs, script);
  else {
    // Base initramfs, then the Debian packages' archive, then the command's.
    const e = buildExecArchive(script);
    x = { initrd: Buffer.concat([readFileSync(initramfs), guestPackagesArchive(await ensureGuestPackages(packages, silentReporter)), e.archive]), markers: e.markers };
  }
  const initrd = join(dir, `initrd-${name}.cpio`);
  writeFileSync(initrd, x.initrd);
  const r = await runBounded('qemu-system-riscv64', [
    ...qemuArgs(kit, initrd, 1, `console=ttyS0 panic=-1 quiet ip=${ip}::10.0.0.1:255.255.255.0::eth0:off`),
    '-object', 'memory-backend-memfd,id=mem,size=512M,share=on',
    '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=c,path=${join(dir, `${name}.sock`)}`,
    '-netdev', 'vhost-user,id=n,chardev=c,queues=1',
    '-device', `virtio-net-pci,netdev=n,mac=${mac},romfile=`,
  ], { timeoutMs: 400_000 });
  let output = '';
  const f = new ExecOutputFilter(x.markers, (t) => (output += t));
  f.push(new TextEncoder().encode(r.stdout));
  return { output, status: f.status, transcript: `${r.stdout.slice(-3000)}\n${r.stderr.slice(-1500)}` };
}

describe('two QEMU guests on one vmm-switch (virtio-net-pci over vhost-user)', () => {
  requireQemu();

  it('ping each other and copy 4 MiB over TCP with matching checksums; GSO frames cross the switch whole', async () => {
    const sw = new DeviceProcess({ name: 'switch', args: [SWITCH_MAIN, '--name', 'e2e'], env, log });
    await sw.start();
    procs.push(sw);
    const macs = { a: '52:54:00:00:0e:0a', b: '52:54:00:00:0e:0b' };
    for (const [n, mac] of Object.entries(macs)) {
      const p = new DeviceProcess({ name: `net-${n}`, args: [NET_MAIN, '--socket', join(dir, `${n}.sock`), '--switch', 'e2e', '--mac', mac, '--id', n], env, log });
      await p.start();
      procs.push(p);
    }
    const [b, a] = await Promise.all([guest('b', '10.0.0.3', macs.b, RECEIVER), guest('a', '10.0.0.2', macs.a, sender(64))]);
    expect(a.status, a.transcript).toBe(0);
    expect(b.status, b.transcript).toBe(0);
    const sent = /sent (\d+) ([0-9a-f]{64})/.exec(a.output);
    const got = /received (\d+) ([0-9a-f]{64})/.exec(b.output);
    expect(sent?.[1]).toBe(String(4 << 20));
    expect(got?.slice(1)).toEqual(sent?.slice(1));
    const st = await querySwitch(join(dir, 'switch-e2e.sock'));
    expect(st.macs.map((m) => m.mac).sort()).toEqual([macs.a, macs.b]);
    const pa = st.ports.find((p) => p.name === 'a')!;
    // Frames above the 1514-byte wire maximum crossed the switch: TSO super-frames went through unsegmented
    // (how many the guest's TCP sends that way depends on timing, so not their average size).
    expect(pa.rx_bytes).toBeGreaterThan(4 << 20);
    expect(pa.rx_largest).toBeGreaterThan(1514);
    expect(st.ports.every((p) => p.tx_dropped === 0 && p.rx_errors === 0)).toBe(true);
  });

  it('the switch is killed mid-transfer: a NIC starts it again, every NIC re-attaches, the copy completes intact', async () => {
    const SW = `e2ekill${process.pid}`;
    const sock = join(dir, `switch-${SW}.sock`);
    const macs = { a: '52:54:00:00:0e:1a', b: '52:54:00:00:0e:1b' };
    for (const [n, mac] of Object.entries(macs)) {
      // No switch runs yet: the first NIC starts it on demand.
      const p = new DeviceProcess({ name: `net-k${n}`, args: [NET_MAIN, '--socket', join(dir, `${n}.sock`), '--switch', SW, '--mac', mac, '--id', `k${n}`], env, log });
      await p.start();
      procs.push(p);
    }
    const first = await querySwitch(sock);
    const run = Promise.all([guest('b', '10.0.0.3', macs.b, RECEIVER), guest('a', '10.0.0.2', macs.a, sender(256))]);
    // Kill the switch once a quarter of the 16 MiB went through it.
    const t0 = Date.now();
    for (;;) {
      const st = await querySwitch(sock);
      if ((st.ports.find((p) => p.name === 'ka')?.rx_bytes ?? 0) > 4 << 20) break;
      if (Date.now() - t0 > 600_000) throw new Error('the transfer never got going');
      await new Promise((r) => setTimeout(r, 200));
    }
    process.kill(first.pid, 'SIGKILL');
    const [b, a] = await run;
    expect(a.status, a.transcript).toBe(0);
    expect(b.status, b.transcript).toBe(0);
    const sent = /sent (\d+) ([0-9a-f]{64})/.exec(a.output);
    const got = /received (\d+) ([0-9a-f]{64})/.exec(b.output);
    expect(sent?.[1]).toBe(String(16 << 20));
    expect(got?.slice(1)).toEqual(sent?.slice(1));
    const second = await querySwitch(sock);
    expect(second.pid).not.toBe(first.pid);
    expect(second.ports.map((p) => p.name).sort()).toEqual(['ka', 'kb']);
    process.kill(second.pid, 'SIGTERM');
  });

  it('run iperf3 (a Debian package with its dependency closure in the initramfs) between the two guests', async () => {
    const SW = `e2eiperf${process.pid}`;
    const sw = new DeviceProcess({ name: 'switch-iperf', args: [SWITCH_MAIN, '--name', SW], env, log });
    await sw.start();
    procs.push(sw);
    const macs = { a: '52:54:00:00:0e:2a', b: '52:54:00:00:0e:2b' };
    for (const [n, mac] of Object.entries(macs)) {
      const p = new DeviceProcess({ name: `net-i${n}`, args: [NET_MAIN, '--socket', join(dir, `${n}.sock`), '--switch', SW, '--mac', mac, '--id', `i${n}`], env, log });
      await p.start();
      procs.push(p);
    }
    const server = 'iperf3 -s -1 > /tmp/s.log 2>&1; tail -n 4 /tmp/s.log';
    const client = 'n=0; until iperf3 -c 10.0.0.3 -t 4 -f m > /tmp/c.log 2>&1; do n=$((n+1)); [ $n -gt 60 ] && { cat /tmp/c.log; exit 30; }; sleep 1; done; grep -E "sender|receiver" /tmp/c.log';
    const [b, a] = await Promise.all([guest('b', '10.0.0.3', macs.b, server, ['iperf3']), guest('a', '10.0.0.2', macs.a, client, ['iperf3'])]);
    expect(a.status, a.transcript).toBe(0);
    expect(b.status, b.transcript).toBe(0);
    const rate = /([\d.]+) Mbits\/sec.*receiver/.exec(a.output);
    expect(rate, a.output).not.toBeNull();
    expect(Number(rate![1])).toBeGreaterThan(0);
  });
});
