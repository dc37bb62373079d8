import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FaultInjectingImage } from './faults.ts';
import { openImage } from './qcow2.ts';

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
