// The device model driven through real split rings (core's in-process
// harness): chains in, status bytes and used lengths out.
import { createLogger } from '@vmm/core';
import { InProcessDevice } from '@vmm/core/testing';
import { describe, expect, it } from 'vitest';
import { IommuDevice } from './device.ts';
import {
  CFG,
  EVENT_QUEUE,
  REQUEST_QUEUE,
  VIRTIO_IOMMU_F_BYPASS_CONFIG,
  VIRTIO_IOMMU_FAULT_F_ADDRESS,
  VIRTIO_IOMMU_FAULT_F_READ,
  VIRTIO_IOMMU_FAULT_R_MAPPING,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_OK,
  bit,
} from './spec.ts';
import { IommuTable, IommuTableView, tableBytes, type TableSizes } from './table.ts';
import { EndpointTranslator } from './translator.ts';
import { attachReq, mapReq, probeReq, req, unmapReq } from './testing/requests.ts';

const SIZES: TableSizes = { maxEndpoints: 4, maxDomains: 4, maxMappings: 64 };
const log = createLogger('iommu-test', undefined, 'silent');

function rig(opts: { acceptFeatures?: bigint } = {}) {
  const table = IommuTable.create(new ArrayBuffer(tableBytes(SIZES)), SIZES, [8, 16], false);
  const dev = new IommuDevice(table, { log, reserved: [{ subtype: 1, start: 0x800_0000, end: 0x80f_ffff }] });
  const h = new InProcessDevice(dev, { log, ...(opts.acceptFeatures !== undefined ? { acceptFeatures: opts.acceptFeatures } : {}) });
  /** Posts readable bytes + `writable` device-writable bytes; returns the writable buffer's address. */
  const post = (readable: Uint8Array, writable = 4, queue = REQUEST_QUEUE): { head: number; out: number } => {
    const bufs = [];
    if (readable.length) {
      const a = h.alloc(readable.length);
      h.mem.write(a, readable);
      bufs.push({ addr: a, len: readable.length, write: false });
    }
    const out = h.alloc(Math.max(writable, 1));
    h.mem.fill(out, Math.max(writable, 1), 0xee);
    if (writable) bufs.push({ addr: out, len: writable, write: true });
    const head = h.submit(queue, bufs);
    if (head === null) throw new Error('ring full');
    return { head, out };
  };
  const status = async (readable: Uint8Array, writable = 4): Promise<{ status: number; len: number; out: Uint8Array }> => {
    const { out } = post(readable, writable);
    const [u] = await h.wait(REQUEST_QUEUE);
    const bytes = h.mem.read(out, Math.max(writable, 1));
    return { status: writable >= 4 ? bytes[writable - 4]! : -1, len: u!.len, out: bytes };
  };
  return { table, dev, h, post, status };
}

describe('IommuDevice', () => {
  it('presents the config space of §5.13.4', () => {
    const { dev } = rig();
    const c = dev.readConfig();
    const v = new DataView(c.buffer);
    expect(c.length).toBe(CFG.size);
    expect(v.getBigUint64(CFG.pageSizeMask, true)).toBe(0xffff_ffff_ffff_f000n);
    expect([v.getBigUint64(CFG.inputStart, true), v.getBigUint64(CFG.inputEnd, true)]).toEqual([0n, 2n ** 48n - 1n]);
    expect([v.getUint32(CFG.domainStart, true), v.getUint32(CFG.domainEnd, true)]).toEqual([1, 65535]);
    expect(v.getUint32(CFG.probeSize, true)).toBe(512);
    expect(c[CFG.bypass]).toBe(0);
  });

  it('serves ATTACH, MAP, PROBE and UNMAP through the request queue', async () => {
    const { table, status } = rig();
    expect(await status(attachReq(1, 8))).toMatchObject({ status: VIRTIO_IOMMU_S_OK, len: 4 });
    expect(await status(mapReq(1, 0x10_0000, 0x10_ffff, 0x8010_0000))).toMatchObject({ status: VIRTIO_IOMMU_S_OK });
    expect(table.mappingsOf(table.findDomain(1))).toHaveLength(1);
    const p = await status(probeReq(8), 512 + 4);
    expect(p).toMatchObject({ status: VIRTIO_IOMMU_S_OK, len: 516 });
    const pv = new DataView(p.out.buffer, p.out.byteOffset);
    expect([pv.getUint16(0, true), pv.getUint16(2, true), p.out[4]]).toEqual([1, 20, 1]);
    expect(p.out.subarray(24, 512).every((b) => b === 0)).toBe(true); // rest of properties zeroed
    expect([...p.out.subarray(513, 516)]).toEqual([0, 0, 0]); // tail reserved zeroed
    expect(await status(unmapReq(1, 0x10_0000, 0x10_ffff))).toMatchObject({ status: VIRTIO_IOMMU_S_OK });
    expect(table.mappingsOf(table.findDomain(1))).toHaveLength(0);
  });

  it('returns unanswerable chains unwritten with used length 0, and answers malformed ones with S_INVAL', async () => {
    const { dev, status } = rig();
    // No room for the tail.
    const noTail = await status(attachReq(1, 8), 3);
    expect(noTail.len).toBe(0);
    expect([...noTail.out]).toEqual([0xee, 0xee, 0xee]);
    // Unknown type.
    const unknown = await status(req(20, (v) => v.setUint8(0, 9)));
    expect(unknown.len).toBe(0);
    expect([...unknown.out]).toEqual([0xee, 0xee, 0xee, 0xee]);
    // Truncated or oversized ATTACH: the tail says INVAL.
    expect((await status(attachReq(1, 8).subarray(0, 12))).status).toBe(VIRTIO_IOMMU_S_INVAL);
    const big = new Uint8Array(5000);
    big.set(attachReq(1, 8));
    expect((await status(big)).status).toBe(VIRTIO_IOMMU_S_INVAL);
    // PROBE without room for probe_size bytes of properties.
    const shortProbe = await status(probeReq(8), 64 + 4);
    expect(shortProbe.status).toBe(VIRTIO_IOMMU_S_INVAL);
    expect(shortProbe.out.subarray(0, 64).every((b) => b === 0xee)).toBe(true); // no property written
    expect(dev.counters).toMatchObject({ rejected: 2, errors: 3 });
    // The device still works.
    expect((await status(attachReq(1, 8))).status).toBe(VIRTIO_IOMMU_S_OK);
  });

  it('completes an UNMAP only once a device process finished the request using the old translation (strict)', async () => {
    const { table, h, post, status } = rig();
    await status(attachReq(1, 8));
    await status(mapReq(1, 0x10_0000, 0x10_0fff, 0x8010_0000));
    const tr = new EndpointTranslator(new IommuTableView(table.buffer), 8, 0);
    const req = tr.begin(); // a disk request is using the mapping
    expect(tr.translate(0x10_0000, 16, 'write').gpa).toBe(0x8010_0000);
    post(unmapReq(1, 0x10_0000, 0x10_0fff));
    await new Promise((r) => setTimeout(r, 30));
    expect(h.poll(REQUEST_QUEUE)).toEqual([]); // held back
    // The mapping is already gone for new translations…
    expect(() => tr.translate(0x10_0000, 16, 'write')).toThrow(/no mapping/);
    tr.end(req); // …and once the old request ended, the UNMAP completes.
    const [u] = await h.wait(REQUEST_QUEUE);
    expect(u!.len).toBe(4);
  });

  it('reports translation faults on the event queue (struct virtio_iommu_fault)', async () => {
    const { table, dev, h, status } = rig();
    await status(attachReq(1, 16));
    const ev = h.alloc(24);
    h.submit(EVENT_QUEUE, [{ addr: ev, len: 24, write: true }]);
    const tr = new EndpointTranslator(new IommuTableView(table.buffer), 16, 1);
    expect(() => tr.translate(0x4000, 8, 'read')).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    expect(dev.pollFaults()).toBe(1);
    h.queues[EVENT_QUEUE]!.handle.flush();
    const [u] = h.poll(EVENT_QUEUE);
    expect(u!.len).toBe(24);
    const f = new DataView(h.mem.read(ev, 24).buffer);
    expect({ reason: f.getUint8(0), flags: f.getUint32(4, true), endpoint: f.getUint32(8, true), address: f.getBigUint64(16, true) }).toEqual({
      reason: VIRTIO_IOMMU_FAULT_R_MAPPING,
      flags: VIRTIO_IOMMU_FAULT_F_READ | VIRTIO_IOMMU_FAULT_F_ADDRESS,
      endpoint: 16,
      address: 0x4000n,
    });
    expect(dev.counters.faultsReported).toBe(1);
  });

  it('the bypass field is writable with BYPASS_CONFIG only, and only with 0 or 1', () => {
    const { dev, table } = rig();
    dev.writeConfig(CFG.bypass, Uint8Array.of(1));
    expect(table.bypass).toBe(true);
    dev.writeConfig(CFG.bypass, Uint8Array.of(2));
    expect(table.bypass).toBe(true);
    dev.writeConfig(CFG.probeSize, Uint8Array.of(0));
    expect(dev.readConfig()[CFG.probeSize + 1]).toBe(2); // 512 intact
    const without = rig({ acceptFeatures: ~bit(VIRTIO_IOMMU_F_BYPASS_CONFIG) });
    without.dev.writeConfig(CFG.bypass, Uint8Array.of(1));
    expect(without.table.bypass).toBe(false);
  });

  it('a lost connection keeps the domains; a device reset ends them (§5.13.5)', async () => {
    const { table, dev, status } = rig();
    await status(attachReq(1, 8));
    await status(mapReq(1, 0, 0xfff, 0x8000_0000));
    dev.reset();
    expect(table.mappingsOf(table.findDomain(1))).toHaveLength(1);
    dev.deviceReset();
    dev.reset();
    expect(table.findDomain(1)).toBe(-1);
    expect(dev.snapshot().domains).toEqual([]);
  });

  it('snapshot() lists domains, endpoints, mappings and counters for query-iommu', async () => {
    const { dev, status } = rig();
    await status(attachReq(7, 8));
    await status(attachReq(7, 16));
    await status(mapReq(7, 0, 0x1fff, 0x8000_0000));
    const s = dev.snapshot();
    expect(s.domains).toEqual([{ id: 7, bypass: false, endpoints: [8, 16], mappings: 1, mappedBytes: 0x2000, maps: 1, unmaps: 0 }]);
    expect(s.counters).toMatchObject({ attach: 2, map: 1, errors: 0 });
    // Each endpoint shows its domain's MAP/UNMAP counts.
    expect(s.endpoints).toEqual([{ id: 8, domain: 7, maps: 1, unmaps: 0 }, { id: 16, domain: 7, maps: 1, unmaps: 0 }]);
    await status(unmapReq(7, 0, 0x1fff));
    expect(dev.snapshot().endpoints).toEqual([{ id: 8, domain: 7, maps: 1, unmaps: 1 }, { id: 16, domain: 7, maps: 1, unmaps: 1 }]);
    expect(s).toMatchObject({ maps: 1, unmaps: 0, faults: 0, bypass: false });
  });
});
