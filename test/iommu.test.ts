// The IOMMU end to end: the IOMMU guest kernel (built by the guest kit from
// Debian's linux-source-6.12) under vmm with vmm-iommu in the top slot; the
// guest's virtio-iommu driver probes it and puts every endpoint in a
// translated (DMA) domain; query-iommu shows those domains from the table;
// vmm-iommu killed with SIGKILL is restarted with the domains intact while
// the guest goes on using its disk; a DMA refused by the table reaches the
// guest driver as a fault event (its log shows it).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { closeSync, fstatSync, openSync } from 'node:fs';
import { mmapShared } from '@vmm/core';
import { EndpointTranslator, IommuTableView } from '@vmm/iommu';
import { QmpClient, startGuestSession } from '@vmm/orchestrator';

const GUEST = `
echo "VDA-ACCESS-PLATFORM=$(cut -c34 /sys/block/vda/device/features) VDA-INDIRECT=$(cut -c29 /sys/block/vda/device/features)"
echo "GROUPS=$(ls /sys/kernel/iommu_groups | wc -l) TYPES=$(cat /sys/kernel/iommu_groups/*/type | sort -u | tr '\\n' ' ')"
dmesg | grep -E 'virtio_iommu|iommu: ' | sed 's/^\\[[^]]*\\] //'
mount -t ext4 /dev/vda /mnt || echo MOUNT-FAILED
dd if=/dev/urandom of=/mnt/a bs=64k count=16 2>/dev/null; sync; echo "SUM-A $(sha256sum /mnt/a | cut -c1-16)"
echo @@KILL@@
# The host kills vmm-iommu now, then a "device process" faults; the disk keeps being used meanwhile and after.
sleep 8
dd if=/dev/urandom of=/mnt/b bs=64k count=16 2>/dev/null; sync; echo "SUM-B $(sha256sum /mnt/b | cut -c1-16)"
echo 3 > /proc/sys/vm/drop_caches; echo "READ-A $(sha256sum /mnt/a | cut -c1-16)"
umount /mnt && echo UMOUNT-OK
echo "IOERRORS=$(dmesg | grep -ci 'i/o error')"
echo "IOMMU-FAULTS=$(dmesg | grep -c 'fault from EP')"
dmesg | grep 'fault from EP' | sed -e 's/^\\[[^]]*\\] //' -e 's/^/FAULT-LINE /'
`;

describe('virtio-iommu end to end', () => {
  it('a guest with --iommu shows its IOMMU groups, mounts ext4 on vda, vmm-iommu survives kill -9 with its domains, and a refused DMA reaches the guest as a fault event', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-iommu-e2e-'));
    const img = join(dir, 'a.img');
    writeFileSync(img, '');
    truncateSync(img, 64 << 20);
    execFileSync('mkfs.ext4', ['-q', '-F', img]);
    const g = await startGuestSession({ iommu: true, disks: [`${img},format=raw,id=d0`], cmd: GUEST });
    try {
      await g.waitFor('@@KILL@@');
      const q = await QmpClient.connect(g.qmpPath);
      const before = (await q.cmd('query-iommu')).return as { device: string; domains: { id: number; endpoints: number[] }[]; endpoints: { id: number; domain: number | null }[] }[];
      expect(before).toHaveLength(1);
      expect(before[0]!.device).toBe('iommu0');
      // Linux gave each of the 7 endpoints (slots 0..6) a default DMA domain of its own.
      expect(before[0]!.endpoints.map((e) => e.id)).toEqual([0, 1, 2, 3, 4, 5, 6]);
      expect(before[0]!.endpoints.every((e) => e.domain !== null)).toBe(true);
      expect(new Set(before[0]!.endpoints.map((e) => e.domain)).size).toBe(7);
      expect(before[0]!.domains.map((d) => d.endpoints.length)).toEqual([1, 1, 1, 1, 1, 1, 1]);
      // vda (slot 6, endpoint 6) negotiated VIRTIO_F_ACCESS_PLATFORM: its driver maps every ring and
      // buffer through the IOMMU and vmm-blk translates each address through the table.
      const vda = (r: typeof before[0]) => r.domains.find((d) => d.endpoints.includes(6)) as { mappings: number } | undefined;
      const b0 = before[0] as typeof before[0] & { maps: number; unmaps: number };
      expect(b0.maps).toBeGreaterThan(0);
      expect(b0.unmaps).toBeGreaterThan(0);
      // Requests, not only mappings, are counted: one MAP request adds one mapping; an UNMAP request removes one or more.
      const r0 = before[0] as typeof before[0] & { maps: number; unmaps: number; mapRequests: number; unmapRequests: number };
      expect(r0.mapRequests).toBeGreaterThanOrEqual(r0.maps);
      expect(r0.unmapRequests).toBeGreaterThan(0);
      expect(r0.unmapRequests).toBeLessThanOrEqual(r0.unmaps);
      expect(vda(before[0]!)!.mappings).toBeGreaterThan(0); // the rings stay mapped
      const pid0 = ((await q.cmd('query-processes')).return as { id: string; pid: number }[]).find((p) => p.id === 'iommu0')!.pid;
      expect(await q.cmd('inject-fault', { kind: 'kill', device: 'iommu0' })).toHaveProperty('return.pid', pid0);
      expect(await q.event('BACKEND_RESTARTED')).toMatchObject({ data: { device: 'iommu0' } });
      const procs = (await q.cmd('query-processes')).return as { id: string; pid: number; state: string; restarts: number }[];
      expect(procs.find((p) => p.id === 'iommu0')).toMatchObject({ state: 'running', restarts: 1 });
      expect(procs.find((p) => p.id === 'iommu0')!.pid).not.toBe(pid0);
      const after = (await q.cmd('query-iommu')).return as (typeof before[0] & { table: string; faults: number })[];
      // The same domains and endpoints (mappings come and go with the guest's I/O meanwhile).
      const shape = (r: typeof before[0]) => r.domains.map((d) => ({ id: d.id, endpoints: d.endpoints }));
      expect(shape(after[0]!)).toEqual(shape(before[0]!));
      const eps = (r: typeof before[0]) => r.endpoints.map((e) => ({ id: e.id, domain: e.domain }));
      expect(eps(after[0]!)).toEqual(eps(before[0]!));
      // A DMA outside vda's mappings, translated the way a device process
      // does it (from its own mapping of the table file): refused, recorded,
      // and reported by the restarted vmm-iommu on the event queue.
      const fd = openSync(after[0]!.table, 'r+');
      const view = new IommuTableView(mmapShared(fd, fstatSync(fd).size));
      closeSync(fd);
      expect(() => new EndpointTranslator(view, 6, 15).translate(0xdead_0000, 512, 'write')).toThrow(/IOMMU fault: endpoint 6 has no mapping there/);
      expect(((await q.cmd('query-iommu')).return as typeof after)[0]!.faults).toBe(after[0]!.faults + 1);
      q.close();
      const { status } = await g.done;
      const out = g.output();
      expect(status, out).toBe(0);
      expect(out).toContain('GROUPS=7 TYPES=DMA ');
      expect(out).toContain('iommu: DMA domain TLB invalidation policy: strict mode');
      expect(out).toMatch(/virtio_iommu virtio\d+: input address: 48 bits/);
      expect(out).not.toContain('MOUNT-FAILED');
      expect(out).toMatch(/SUM-A [0-9a-f]{16}/);
      expect(out).toMatch(/SUM-B [0-9a-f]{16}/);
      expect(out.match(/SUM-A ([0-9a-f]{16})/)![1]).toBe(out.match(/READ-A ([0-9a-f]{16})/)![1]);
      expect(out).toContain('UMOUNT-OK');
      expect(out).toContain('IOERRORS=0');
      expect(out).toContain('IOMMU-FAULTS=1');
      // Behind the IOMMU no INDIRECT_DESC (each indirect table would cost a MAP and an UNMAP round trip).
      expect(out).toContain('VDA-ACCESS-PLATFORM=1 VDA-INDIRECT=0');
      expect(out).toMatch(/FAULT-LINE virtio_iommu virtio\d+: page fault from EP 6 at 0xdead0000 \[W\]/);
      // The host sees a clean file system.
      execFileSync('e2fsck', ['-fn', img], { stdio: 'pipe' });
    } finally {
      await g.attached.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
