// Interoperability: our front-end and driver against a real third-party
// back-end, qemu-storage-daemon's vhost-user-blk export (libvhost-user).
// Skipped when qemu-storage-daemon is not installed (Debian qemu-system-common).
import { execa } from 'execa';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { closeFd, unixConnect } from '../ffi.ts';
import { createLogger } from '../logger.ts';
import { VhostUserDriver } from './driver.ts';
import { VhostUserFrontend } from './frontend.ts';

const QSD = '/usr/bin/qemu-storage-daemon';
const dir = mkdtempSync(join(tmpdir(), 'vmm-qsd-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger('qsd-test', undefined, 'warn');

async function waitForSocket(path: string, child: { exitCode: number | null }): Promise<void> {
  for (;;) {
    if (child.exitCode !== null) throw new Error(`qemu-storage-daemon exited with ${child.exitCode}`);
    try {
      closeFd(unixConnect(path));
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

describe.skipIf(!existsSync(QSD))('front-end against qemu-storage-daemon vhost-user-blk', () => {
  it('negotiates, reads config, writes and reads back sectors through a real back-end', async () => {
    const img = join(dir, 'disk.raw');
    writeFileSync(img, Buffer.alloc(1 << 20));
    const sock = join(dir, 'qsd.sock');
    const qsd = execa(QSD, ['--blockdev', `driver=file,node-name=file0,filename=${img}`, '--export', `type=vhost-user-blk,id=exp0,addr.type=unix,addr.path=${sock},node-name=file0,writable=on,num-queues=1`], { reject: false, stdio: 'inherit' });
    try {
      await waitForSocket(sock, qsd);
      // The probe connection above was accepted and dropped; qsd serves one front-end at a time and is back to listening.
      const d = await VhostUserDriver.start(VhostUserFrontend.connect(sock, { log }), { queues: 1, queueSize: 64, eventIdx: true });
      const capacity = new DataView((await d.frontend.getConfig(0, 8)).buffer).getBigUint64(0, true);
      expect(capacity).toBe(2048n);
      const q = d.queue(0);
      const hdr = d.alloc(16);
      const data = d.alloc(4096, 512);
      const status = d.alloc(1);
      const blk = async (type: number, sector: bigint, write: boolean) => {
        d.mem.writeU32(hdr, type);
        d.mem.writeU32(hdr + 4, 0);
        d.mem.writeU64(hdr + 8, sector);
        d.mem.writeU8(status, 0xff);
        const head = q.submit([{ addr: hdr, len: 16, write: false }, { addr: data, len: 4096, write }, { addr: status, len: 1, write: true }]);
        const done = await q.wait();
        expect(done.map((c) => c.head)).toEqual([head]);
        return d.mem.readU8(status);
      };
      const pattern = new Uint8Array(4096).map((_, i) => (i * 7 + 3) & 0xff);
      d.mem.write(data, pattern);
      expect(await blk(1, 8n, false)).toBe(0); // VIRTIO_BLK_T_OUT
      d.mem.fill(data, 4096, 0);
      expect(await blk(0, 8n, true)).toBe(0); // VIRTIO_BLK_T_IN
      expect(d.mem.read(data, 4096)).toEqual(pattern);
      d.close();
    } finally {
      qsd.kill('SIGTERM');
      await qsd;
    }
  });
});
