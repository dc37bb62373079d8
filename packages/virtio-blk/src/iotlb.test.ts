// Protocol test: vmm-blk --iotlb behind a front-end with a vIOMMU of its own
// (vhost-user "IOMMU support"): core's VhostUserDriver negotiates
// VIRTIO_F_ACCESS_PLATFORM, opens the back-end channel and gives rings and
// buffers as IOVAs; the real vmm-blk process asks for every translation with
// BACKEND_IOTLB_MSG misses and gets VHOST_USER_IOTLB_MSG updates; an
// invalidation or a permission the vIOMMU refuses makes the request fail
// without a byte of guest memory touched.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, DeviceProcess, IotlbPerm, VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_INDIRECT_DESC, VhostUserDriver, VhostUserFrontend, type DriverIommu } from '@vmm/core';
import { afterAll, describe, expect, it } from 'vitest';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './spec.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-iotlb-'));
const log = createLogger('blk-iotlb-test', undefined, 'warn');
const MAIN = join(import.meta.dirname, 'main.ts');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const pattern = (len: number, seed: number): Uint8Array => Uint8Array.from({ length: len }, (_, i) => (i * 31 + seed) & 0xff);

describe('vmm-blk with vhost-user IOTLB', () => {
  it('serves a front-end with a vIOMMU: misses answered by updates, an invalidated or read-only buffer fails its request untouched', async () => {
    const image = join(dir, 'disk.raw');
    writeFileSync(image, new Uint8Array(1 << 20));
    const sock = join(dir, 'blk.sock');
    const proc = new DeviceProcess({ name: 'blk-iotlb', args: [MAIN, '--socket', sock, '--image', image, '--iotlb'], env: { VMM_LOG_LEVEL: 'error' }, log });
    await proc.start();
    const d = await VhostUserDriver.start(VhostUserFrontend.connect(sock, { log }), { queues: 1, queueSize: 64, iotlb: true });
    try {
      expect(d.features & VIRTIO_F_ACCESS_PLATFORM).toBe(VIRTIO_F_ACCESS_PLATFORM);
      // Behind an IOMMU indirect tables would cost a mapping each: not offered.
      expect(d.features & VIRTIO_F_INDIRECT_DESC).toBe(0n);
      const iommu: DriverIommu = d.iommu!;
      const q = d.queue(0);
      // One request page: header at 0, status at 16; mapped read-write (the device reads one, writes the other).
      const req = d.alloc(4096, 4096);
      const reqIova = iommu.map(req, 4096);
      const blk = async (type: number, sector: number, data: { iova: number; len: number }): Promise<{ status: number; len: number }> => {
        const h = new DataView(new ArrayBuffer(16));
        h.setUint32(0, type, true);
        h.setBigUint64(8, BigInt(sector), true);
        d.mem.write(req, new Uint8Array(h.buffer));
        d.mem.writeU8(req + 16, 0xee);
        q.submit([{ addr: reqIova, len: 16, write: false }, { addr: data.iova, len: data.len, write: type === VIRTIO_BLK_T_IN }, { addr: reqIova + 16, len: 1, write: true }]);
        const [u] = await q.wait();
        return { status: d.mem.readU8(req + 16), len: u!.len };
      };

      // A write from a read-only mapping (the device only reads it) lands in the image.
      const out = d.alloc(8192, 4096);
      d.mem.write(out, pattern(8192, 7));
      const outIova = iommu.map(out, 8192, IotlbPerm.RO);
      expect(outIova).not.toBe(out);
      expect(await blk(VIRTIO_BLK_T_OUT, 8, { iova: outIova, len: 8192 })).toEqual({ status: VIRTIO_BLK_S_OK, len: 1 });
      expect(readFileSync(image).subarray(8 * 512, 8 * 512 + 8192)).toEqual(Buffer.from(pattern(8192, 7)));
      // Read it back into a read-write mapping.
      const into = d.alloc(8192, 4096);
      const intoIova = iommu.map(into, 8192);
      expect(await blk(VIRTIO_BLK_T_IN, 8, { iova: intoIova, len: 8192 })).toEqual({ status: VIRTIO_BLK_S_OK, len: 8193 });
      expect(d.mem.read(into, 8192)).toEqual(pattern(8192, 7));
      // Every translation came from a miss: the ring, the request page, the two buffers.
      expect(iommu.missesServed).toBeGreaterThanOrEqual(4);
      expect(iommu.missesRefused).toBe(0);

      // The device may not write into a read-only mapping (the cached entry says RO): the request fails and nothing is written.
      d.mem.fill(out, 8192, 0x5a);
      const r = await blk(VIRTIO_BLK_T_IN, 8, { iova: outIova, len: 8192 });
      expect(r.len).toBe(0);
      expect(d.mem.read(out, 8192).every((b) => b === 0x5a)).toBe(true);
      expect(iommu.missesRefused).toBe(0);

      // Invalidated (strict: acked only when no request can use it): the next access misses, the vIOMMU has
      // nothing there and refuses, and the request fails the same way.
      await iommu.unmap(intoIova);
      d.mem.fill(into, 8192, 0xa5);
      expect((await blk(VIRTIO_BLK_T_IN, 8, { iova: intoIova, len: 8192 })).len).toBe(0);
      expect(d.mem.read(into, 8192).every((b) => b === 0xa5)).toBe(true);
      expect(iommu.missesRefused).toBe(1);

      // Mapped again at a new IOVA, the same buffer works again.
      const again = iommu.map(into, 8192);
      expect(await blk(VIRTIO_BLK_T_IN, 8, { iova: again, len: 8192 })).toEqual({ status: VIRTIO_BLK_S_OK, len: 8193 });
      expect(d.mem.read(into, 8192)).toEqual(pattern(8192, 7));
    } finally {
      d.close();
      await proc.stop();
    }
  });

  it('refuses --iotlb together with an IOMMU table, naming both', async () => {
    const { parseBlkArgs } = await import('./main.ts');
    expect(() => parseBlkArgs(['--socket', 's', '--image', 'x', '--iotlb', '--iommu-table', 't', '--iommu-endpoint', '1', '--iommu-reader', '0'])).toThrow(/iotlb and iommu-table/);
  });
});
