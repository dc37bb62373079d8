// processMemory on real processes: this one, with a memfd mapped and touched.
import { describe, expect, it } from 'vitest';
import { closeFd, memfdCreate, mmapShared, munmapBuffer } from './ffi.ts';
import { parseSmaps, processMemory } from './proc-memory.ts';

describe('processMemory', () => {
  it('counts the touched pages of a memfd mapping apart from the rest of RSS', () => {
    const before = processMemory(process.pid)!;
    expect(before.rssBytes).toBeGreaterThan(0);
    const size = 16 << 20;
    const fd = memfdCreate('vmm-test-ram', size);
    const buf = mmapShared(fd, size);
    const bytes = new Uint8Array(buf);
    for (let i = 0; i < 8 << 20; i += 4096) bytes[i] = 1; // touch 8 MiB of it
    const after = processMemory(process.pid)!;
    expect(after.sharedMemfdBytes - before.sharedMemfdBytes).toBeGreaterThanOrEqual(8 << 20);
    expect(after.sharedMemfdBytes - before.sharedMemfdBytes).toBeLessThan(9 << 20);
    expect(after.ownBytes).toBe(after.rssBytes - after.sharedMemfdBytes);
    munmapBuffer(buf);
    closeFd(fd);
  });

  it('is null for a process that does not exist', () => {
    expect(processMemory(0x7fff_fff0)).toBeNull();
    expect(processMemory(undefined)).toBeNull();
  });

  it('parses smaps: only mappings of a memfd count as shared guest memory', () => {
    const text = [
      '00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/node',
      'Rss:                 300 kB',
      '7f0000000000-7f0040000000 rw-s 00000000 00:01 1234   /memfd:vmm-guest-ram (deleted)',
      'Size:            1048576 kB',
      'Rss:                2048 kB',
      '7f1000000000-7f1000021000 rw-p 00000000 00:00 0',
      'Rss:                 100 kB',
    ].join('\n');
    expect(parseSmaps(text)).toEqual({ rssBytes: 2448 * 1024, sharedMemfdBytes: 2048 * 1024 });
  });
});
