// End-to-end: a QEMU guest whose virtio-net NIC is served by vmm-net on a
// host tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR). The test makes its own
// network namespace; vmm-net runs inside it and creates the tap there, the
// namespace's side of the tap gets 10.0.1.1/24. The guest pings it and
// sends 4 MiB over TCP to a socat listening in the namespace; the file the
// host side received has the guest's checksum. No host interface is touched.
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, DeviceProcess } from '@vmm/core';
import { ExecOutputFilter, initrdWithExec, type GuestKit } from '@vmm/orchestrator';
import { kitAndInitramfs, qemuArgs, requireQemu, runBounded, tcpSenderScript } from './guest-helpers.ts';

const NET = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmm-net-tap-'));
const log = createLogger('net-tap-test', undefined, 'warn');
const NS = `vmmtap${process.pid}`;
const TAP = 'vmtap0';
let kit: GuestKit;
let initramfs: string;
let proc: DeviceProcess | null = null;

const canNetns = (() => {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync('ip', ['netns', 'add', NS]);
    return true;
  } catch {
    return false;
  }
})();
const nsExec = (...cmd: string[]): string => execFileSync('ip', ['netns', 'exec', NS, ...cmd]).toString();

beforeAll(async () => {
  if (canNetns) ({ kit, initramfs } = await kitAndInitramfs());
});
afterAll(async () => {
  await proc?.stop();
  if (canNetns) execFileSync('ip', ['netns', 'del', NS]);
  rmSync(dir, { recursive: true, force: true });
});

const GUEST = tcpSenderScript({ to: '10.0.1.1', blocks: 64, pingWaitS: 20, tries: 60, drainTicks: 600 });

describe.skipIf(!canNetns)('a QEMU guest on vmm-net --tap, in a network namespace of its own', () => {
  requireQemu();

  it('pings the namespace side of the tap and sends it 4 MiB over TCP intact', async () => {
    const sock = join(dir, 'tap.sock');
    proc = new DeviceProcess({
      name: 'net-tap', command: 'ip', args: ['netns', 'exec', NS, process.execPath, NET, '--socket', sock, '--tap', TAP, '--mac', '52:54:00:00:0f:01'],
      env: { VMM_LOG_LEVEL: 'warn' }, log,
    });
    await proc.start();
    nsExec('ip', 'addr', 'add', '10.0.1.1/24', 'dev', TAP);
    nsExec('ip', 'link', 'set', TAP, 'up');
    nsExec('ip', 'link', 'set', 'lo', 'up');
    const out = join(dir, 'received');
    const sink = spawn('ip', ['netns', 'exec', NS, 'socat', '-u', 'TCP-LISTEN:5000,reuseaddr', `OPEN:${out},creat,trunc`], { stdio: 'ignore' });
    const sinkDone = new Promise<number | null>((resolve) => sink.once('exit', (c) => resolve(c)));

    const x = await initrdWithExec(initramfs, GUEST);
    const initrd = join(dir, 'initrd.cpio');
    writeFileSync(initrd, x.initrd);
    const r = await runBounded('qemu-system-riscv64', [
      ...qemuArgs(kit, initrd, 1, 'console=ttyS0 panic=-1 quiet ip=10.0.1.2::10.0.1.1:255.255.255.0::eth0:off'),
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c,path=${sock}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=1', '-device', 'virtio-net-pci,netdev=n,mac=52:54:00:00:0f:01,romfile=',
    ], { timeoutMs: 400_000 });
    let output = '';
    const f = new ExecOutputFilter(x.markers, (t) => (output += t));
    f.push(new TextEncoder().encode(r.stdout));
    expect(f.status, `${r.stdout.slice(-3000)}\n${r.stderr.slice(-1500)}`).toBe(0);
    expect(await sinkDone).toBe(0);
    const sent = /sent (\d+) ([0-9a-f]{64})/.exec(output)!;
    const got = readFileSync(out);
    expect(got.length).toBe(Number(sent[1]));
    expect(createHash('sha256').update(got).digest('hex')).toBe(sent[2]);
    // The namespace side saw the guest's frames arrive through the tap.
    expect(Number(nsExec('cat', `/sys/class/net/${TAP}/statistics/tx_packets`))).toBeGreaterThan(0);
  });
});
