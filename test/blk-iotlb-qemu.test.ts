// End-to-end: a real QEMU with a vIOMMU is the vhost-user front-end of
// `vmm-blk --iotlb` (vhost-user IOTLB: VIRTIO_F_ACCESS_PLATFORM, IOTLB_MSG
// updates and invalidations, BACKEND_IOTLB_MSG misses with BACKEND_REQ +
// REPLY_ACK). What Debian's QEMU 7.2 can do here (checked):
// - riscv64 `-M virt`: no; `-device virtio-iommu-pci` says "Check your
//   machine implements a hotplug handler", virtio-iommu-device "is not
//   attached to any PCI bus".
// - x86_64 `-M q35`: virtio-iommu-pci exists, but bookworm's amd64 kernel
//   has no VIRTIO_IOMMU; intel-iommu with device-iotlb=on works, with the
//   device's iommu_platform=on,ats=on,disable-legacy=on. That is this test:
//   bookworm's own amd64 kernel (scripts/x86-guest.sh) in strict mode
//   (intel_iommu=on iommu.strict=1) writes a pattern through vmm-blk, drops
//   its caches, reads it back; the host checks the image.
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger, DeviceProcess } from '@vmm/core';
import { writeCpio, type CpioEntry } from '@vmm/orchestrator';
import { runBounded } from './guest-helpers.ts';

const VMM_BLK_BIN = fileURLToPath(new URL('../packages/virtio-blk/bin/vmm-blk', import.meta.url));
const X86_GUEST = fileURLToPath(new URL('../scripts/x86-guest.sh', import.meta.url));
const PLAIN_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: process.env.HOME ?? '/root', VMM_LOG_LEVEL: 'warn' };
const MIB = 1 << 20;
const DISK_MIB = 8;
/** virtio over PCI for the amd64 kernel, in load order (each one's depends= before it). */
const MODULES = ['virtio_ring', 'virtio', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk'];
const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-iotlb-qemu-'));
const log = createLogger('blk-iotlb-qemu-test', undefined, 'warn');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const INIT = `#!/bin/sh
mkdir -p /tmp; mount -t proc p /proc; mount -t sysfs s /sys; mount -t devtmpfs d /dev
for m in ${MODULES.join(' ')}; do insmod /lib/m/$m.ko || echo "INSMOD-FAILED $m"; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "ACCESS-PLATFORM=$(cut -c34 /sys/block/vda/device/features)"
dmesg | grep -q 'DMAR: IOMMU enabled' && echo DMAR-ON
i=0
while [ $i -lt ${DISK_MIB} ]; do dd if=/blk/pattern of=/dev/vda bs=64k seek=$((i*16)) count=16 oflag=direct 2>/dev/null || echo WRITE-FAILED; i=$((i+1)); done
sync; echo 3 > /proc/sys/vm/drop_caches
echo "GOT $(dd if=/dev/vda bs=1M count=${DISK_MIB} 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "IOERRORS=$(dmesg | grep -ci 'i/o error')"
echo @@DONE@@
poweroff -f
`;

function hasQemuX86(): boolean {
  try {
    execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('vmm-blk --iotlb under QEMU with a vIOMMU (intel-iommu, x86_64 guest)', () => {
  it('the guest writes and reads back a pattern through translated DMA; the host sees the same bytes', async () => {
    if (!hasQemuX86()) throw new Error('qemu-system-x86_64 is missing: run scripts/setup.sh (Debian package qemu-system-x86)');
    const guest = execFileSync(X86_GUEST, { encoding: 'utf8' }).trim();
    const kernel = join(guest, 'boot', readdirSync(join(guest, 'boot')).find((f) => f.startsWith('vmlinuz-'))!);
    const modDir = join(guest, 'lib/modules', readdirSync(join(guest, 'lib/modules'))[0]!);
    const find = (name: string): string => execFileSync('find', [modDir, '-name', `${name}.ko`], { encoding: 'utf8' }).trim().split('\n')[0]!;
    const pattern = new Uint8Array(randomBytes(MIB));
    const want = new Uint8Array(DISK_MIB * MIB);
    for (let i = 0; i < DISK_MIB; i++) want.set(pattern, i * MIB);
    const entries: CpioEntry[] = [
      ...['bin', 'lib', 'lib/m', 'dev', 'proc', 'sys', 'blk'].map((path): CpioEntry => ({ type: 'dir', path })),
      { type: 'file', path: 'bin/busybox', data: readFileSync(join(guest, 'bin/busybox')), mode: 0o755 },
      ...['sh', 'insmod', 'mount', 'mkdir', 'dd', 'md5sum', 'cut', 'cat', 'echo', 'sleep', 'sync', 'dmesg', 'grep', 'poweroff'].map((a): CpioEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
      ...MODULES.map((m): CpioEntry => ({ type: 'file', path: `lib/m/${m}.ko`, data: readFileSync(find(m)) })),
      { type: 'file', path: 'blk/pattern', data: pattern },
      { type: 'file', path: 'init', data: new TextEncoder().encode(INIT), mode: 0o755 },
    ];
    const initrd = join(dir, 'initrd.cpio');
    writeFileSync(initrd, writeCpio(entries));
    const image = join(dir, 'disk.raw');
    writeFileSync(image, new Uint8Array(DISK_MIB * MIB));
    const sock = join(dir, 'blk.sock');
    const proc = new DeviceProcess({ name: 'blk-iotlb', command: VMM_BLK_BIN, args: ['--socket', sock, '--file', image, '--iotlb'], env: PLAIN_ENV, log });
    await proc.start();
    let r;
    try {
      r = await runBounded('qemu-system-x86_64', [
        '-M', 'q35,kernel-irqchip=split', '-m', '512M', '-nographic', '-no-reboot',
        '-kernel', kernel, '-initrd', initrd, '-append', 'console=ttyS0 quiet panic=-1 intel_iommu=on iommu.strict=1',
        // The vIOMMU, with device IOTLBs (ATS): QEMU's vhost then translates through IOTLB messages.
        '-device', 'intel-iommu,intremap=on,device-iotlb=on',
        '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem',
        '-chardev', `socket,id=c,path=${sock}`,
        '-device', 'vhost-user-blk-pci,chardev=c,iommu_platform=on,ats=on,disable-legacy=on',
      ], { timeoutMs: 400_000 });
    } finally {
      expect(await proc.stop()).toEqual({ code: 0, signal: null });
    }
    const out = r.stdout;
    expect(r.timedOut, `QEMU did not finish; console:\n${out.slice(-3000)}\n${r.stderr.slice(-2000)}`).toBe(false);
    expect(out, out.slice(-3000)).toContain('@@DONE@@');
    expect(out).not.toContain('INSMOD-FAILED');
    expect(out).toContain('DMAR-ON');
    expect(out).toContain('ACCESS-PLATFORM=1');
    expect(out).not.toContain('WRITE-FAILED');
    expect(out).toContain(`GOT ${createHash('md5').update(want).digest('hex')}`);
    expect(out).toContain('IOERRORS=0');
    expect(Buffer.compare(readFileSync(image), want)).toBe(0);
  });
});
