// End-to-end: a real QEMU (`qemu-system-riscv64 -M virt`, TCG) is the
// vhost-user front-end of our vmm-blk process (vhost-user-blk-pci, guest RAM
// in a shared memfd), started the way the README tells a QEMU user to: the
// package's `vmm-blk` bin from a plain shell environment (system PATH only,
// where `node` is the machine's Node 20), and QEMU with the README's
// -object/-numa/-chardev/-device arguments. The Debian guest kernel writes a known pattern across
// the whole disk, syncs, drops its caches, reads the disk back and checks
// it; then the host checks the image (raw: the bytes; qcow2: qemu-img check
// and compare). Bounded deadlines, no timing assertions.
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, DeviceProcess } from '@vmm/core';
import { ExecOutputFilter, initrdWithExec, writeCpio, type GuestKit } from '@vmm/orchestrator';
import { kitAndInitramfs, qemuArgs, requireQemu, runBounded } from './guest-helpers.ts';

const VMM_BLK_BIN = fileURLToPath(new URL('../packages/virtio-blk/bin/vmm-blk', import.meta.url));
/** A login shell's environment: no pnpm shims on PATH. */
const PLAIN_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: process.env.HOME ?? '/root', VMM_LOG_LEVEL: 'warn' };
const MIB = 1 << 20;
const DISK_MIB = 24;
const SERIAL = 'vmm-e2e-disk';

let kit: GuestKit;
let initramfs: string;
const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-qemu-'));
const log = createLogger('blk-qemu-test', undefined, 'warn');

beforeAll(async () => {
  ({ kit, initramfs } = await kitAndInitramfs());
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The disk the guest writes: a random 1 MiB pattern in every MiB, stamped "block-N\n" at its start. */
function expectedDisk(pattern: Uint8Array): Uint8Array {
  const d = new Uint8Array(DISK_MIB * MIB);
  for (let i = 0; i < DISK_MIB; i++) {
    d.set(pattern, i * MIB);
    d.set(new TextEncoder().encode(`block-${i}\n`), i * MIB);
  }
  return d;
}

const GUEST_SCRIPT = `
D=/dev/vda
[ -b $D ] || { echo "no $D"; ls /sys/block; exit 10; }
i=0
while [ $i -lt ${DISK_MIB} ]; do
  dd if=/blk/pattern of=$D bs=1M seek=$i count=1 2>/dev/null || exit 12
  printf 'block-%d\\n' $i | dd of=$D bs=1 seek=$((i*1048576)) conv=notrunc 2>/dev/null || exit 13
  i=$((i+1))
done
sync
echo 3 > /proc/sys/vm/drop_caches
got=$(dd if=$D bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)
[ "$got" = "$(cat /blk/want)" ] || { echo "mismatch $got"; exit 11; }
echo "serial=$(cat /sys/block/vda/serial)"
echo "size=$(cat /sys/block/vda/size)"
echo verified
`;

describe('vmm-blk under a real QEMU front-end (vhost-user-blk-pci)', () => {
  requireQemu();

  for (const format of ['raw', 'qcow2'] as const) {
    it(`guest writes, syncs and verifies a pattern on a ${format} image; the host agrees`, async () => {
      const image = join(dir, `disk.${format}`);
      if (format === 'raw') writeFileSync(image, new Uint8Array(DISK_MIB * MIB));
      else execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, `${DISK_MIB}M`]);
      const pattern = new Uint8Array(randomBytes(MIB));
      const want = expectedDisk(pattern);
      const wantHash = createHash('sha256').update(want).digest('hex');

      // The command archive plus a data archive with the pattern and its expected hash.
      const x = await initrdWithExec(initramfs, GUEST_SCRIPT);
      const data = writeCpio([
        { type: 'dir', path: 'blk' },
        { type: 'file', path: 'blk/pattern', data: pattern },
        { type: 'file', path: 'blk/want', data: new TextEncoder().encode(`${wantHash}\n`) },
      ]);
      const initrd = join(dir, `initrd-${format}.cpio`);
      writeFileSync(initrd, Buffer.concat([x.initrd, data]));

      const sock = join(dir, `${format}.sock`);
      // README: packages/virtio-blk/bin/vmm-blk --socket /tmp/vda.sock --file disk.img --queues 2 --serial … &
      const proc = new DeviceProcess({ name: `blk-${format}`, command: VMM_BLK_BIN, args: ['--socket', sock, '--file', image, '--format', format, '--queues', '2', '--serial', SERIAL], env: PLAIN_ENV, log });
      await proc.start();
      let r;
      try {
        r = await runBounded('qemu-system-riscv64', [
          ...qemuArgs(kit, initrd, 1, 'console=ttyS0 panic=-1 quiet'),
          // README, "vmm-blk behind QEMU": exactly these four arguments.
          '-object', 'memory-backend-memfd,id=mem,size=512M,share=on',
          '-numa', 'node,memdev=mem',
          '-chardev', `socket,id=c,path=${sock}`,
          '-device', 'vhost-user-blk-pci,chardev=c,num-queues=2',
        ], { timeoutMs: 400_000 });
      } finally {
        expect(await proc.stop()).toEqual({ code: 0, signal: null });
      }
      let output = '';
      const filter = new ExecOutputFilter(x.markers, (t) => (output += t));
      filter.push(new TextEncoder().encode(r.stdout));
      expect(r.timedOut, `QEMU did not finish; console:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`).toBe(false);
      expect(output, r.stdout.slice(-3000)).toContain('verified');
      expect(filter.status).toBe(0);
      expect(output).toContain(`serial=${SERIAL}`);
      expect(output).toContain(`size=${(DISK_MIB * MIB) / 512}`);

      if (format === 'raw') {
        expect(Buffer.compare(readFileSync(image), want)).toBe(0);
      } else {
        expect(execFileSync('qemu-img', ['check', image]).toString()).toContain('No errors');
        const ref = join(dir, 'want.raw');
        writeFileSync(ref, want);
        expect(execFileSync('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', image, ref]).toString()).toContain('identical');
      }
    });
  }
});
