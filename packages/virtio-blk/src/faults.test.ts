import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FaultInjectingImage } from './faults.ts';
import { openServedImage } from './main.ts';
import { openImage } from './qcow2.ts';
import { RawImage } from './raw.ts';
import { executeRequest } from './request.ts';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK } from './spec.ts';

describe('FaultInjectingImage', () => {
  it('fails exactly the next N requests, then passes; ENOSPC fails writes only and writes nothing', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'vmm-faults-')), 'd.img');
    writeFileSync(file, Buffer.alloc(64 * 1024, 0xaa));
    const img = new FaultInjectingImage(await openImage(file, { format: 'raw', readOnly: false }));
    const buf = new Uint8Array(4096);
    expect(img.control({ fault: 'fail-requests', count: 2 })).toMatch(/next 2/);
    await expect(img.read(0, buf)).rejects.toMatchObject({ errno: 'EIO' });
    await expect(img.write(0, new Uint8Array(4096).fill(1))).rejects.toMatchObject({ errno: 'EIO' });
    await img.read(0, buf);
    expect(buf[0]).toBe(0xaa);
    img.control({ fault: 'enospc', on: true });
    await expect(img.write(4096, new Uint8Array(4096).fill(2))).rejects.toMatchObject({ errno: 'ENOSPC' });
    await expect(img.writeZeroes(0, 4096, false)).rejects.toMatchObject({ errno: 'ENOSPC' });
    await img.read(4096, buf);
    img.control({ fault: 'enospc', on: false });
    await img.write(8192, new Uint8Array(4096).fill(3));
    await img.flush();
    await img.close();
    const data = readFileSync(file);
    expect(data[0]).toBe(0xaa); // the failed writes left no trace
    expect(data[4096]).toBe(0xaa);
    expect(data[8192]).toBe(3);
    expect(() => img.control({ fault: 'fail-requests', count: -1 })).toThrow(/count=-1/);
    expect(() => img.control({ fault: 'melt' })).toThrow(/unknown fault/);
  });
});

describe('vectored I/O through the served image stack', () => {
  // vmm-blk serves openServedImage()'s stack; a wrapper in it that does not
  // forward readv/writev silently sends every multi-segment request down the
  // per-segment path (this happened: the bench measured that path for months).
  it('a multi-segment read and write reach the raw image as one preadv and one pwritev', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'vmm-vec-')), 'd.img');
    writeFileSync(file, Buffer.alloc(64 * 1024));
    const { image, served } = await openServedImage({ image: file, format: 'raw', readOnly: false });
    expect(image).toBeInstanceOf(RawImage);
    const raw = image as RawImage;
    const segs = [new Uint8Array(4096).fill(1), new Uint8Array(512).fill(2), new Uint8Array(3584).fill(3)];
    const w = await executeRequest({ type: 'out', sector: 8, segments: segs, bytes: 8192, status: new Uint8Array(1) }, served, new Uint8Array());
    expect(w.status).toBe(VIRTIO_BLK_S_OK);
    const back = [new Uint8Array(1024), new Uint8Array(7168)];
    const r = await executeRequest({ type: 'in', sector: 8, segments: back, bytes: 8192, status: new Uint8Array(1) }, served, new Uint8Array());
    expect(r.status).toBe(VIRTIO_BLK_S_OK);
    expect(raw.ioStats).toEqual({ vectored: 2, single: 0 });
    expect(Buffer.concat(back)).toEqual(Buffer.concat(segs));
    // An armed fault still fails a vectored request, and writes nothing.
    served.control({ fault: 'fail-requests', count: 1 });
    const f = await executeRequest({ type: 'out', sector: 0, segments: [new Uint8Array(512).fill(9), new Uint8Array(512).fill(9)], bytes: 1024, status: new Uint8Array(1) }, served, new Uint8Array());
    expect(f.status).toBe(VIRTIO_BLK_S_IOERR);
    expect(readFileSync(file)[0]).toBe(0);
    await served.close();
  });

  it('a qcow2 image (no vectored calls) is still served segment by segment through the wrapper', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'vmm-vec-')), 'd.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '1M']);
    const { served } = await openServedImage({ image: file, format: 'qcow2', readOnly: false });
    const segs = [new Uint8Array(512).fill(5), new Uint8Array(1536).fill(6)];
    expect((await executeRequest({ type: 'out', sector: 3, segments: segs, bytes: 2048, status: new Uint8Array(1) }, served, new Uint8Array())).status).toBe(VIRTIO_BLK_S_OK);
    const back = [new Uint8Array(2048)];
    expect((await executeRequest({ type: 'in', sector: 3, segments: back, bytes: 2048, status: new Uint8Array(1) }, served, new Uint8Array())).status).toBe(VIRTIO_BLK_S_OK);
    expect(Buffer.from(back[0]!)).toEqual(Buffer.concat(segs));
    await served.close();
  });
});
