import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../memory.ts';
import { iotlbMsg, validateBackendRequest, validateRequest, VhostUserProtocolError } from './codec.ts';
import { DeviceIotlb, IotlbMissError, IotlbPerm, IotlbType, isIotlbMiss } from './iotlb.ts';
import { BackendReq, Req, VERSION } from './protocol.ts';

const RAM = 0x8000_0000;
const UA = 0x7f00_0000_0000n;

function rig() {
  const mem = GuestMemory.fromBuffers([{ gpa: RAM, buffer: new ArrayBuffer(1 << 20), userAddr: UA }]);
  const misses: [number, number][] = [];
  const t = new DeviceIotlb(mem, (iova, perm) => misses.push([iova, perm]));
  return { mem, t, misses };
}
const update = (iova: number, size: number, off: number, perm: number = IotlbPerm.RW) => ({ iova: BigInt(iova), size: BigInt(size), uaddr: UA + BigInt(off), perm, type: IotlbType.UPDATE });

describe('device IOTLB (vhost-user IOTLB messages)', () => {
  it('translates IOVA → the front-end user address → guest-physical, and reports one miss per page until the update', () => {
    const { t, misses, mem } = rig();
    expect(() => t.translate(0x1000_0100, 8, 'read')).toThrow(IotlbMissError);
    expect(() => t.translate(0x1000_0200, 8, 'read')).toThrow(IotlbMissError);
    expect(misses).toEqual([[0x1000_0100, IotlbPerm.RO]]);
    t.update(update(0x1000_0000, 0x2000, 0x3000));
    expect(t.translate(0x1000_0100, 8, 'read')).toEqual({ gpa: RAM + 0x3100, len: 8 });
    // Contiguous only up to the entry's end.
    expect(t.translate(0x1000_1ff0, 0x100, 'write')).toEqual({ gpa: RAM + 0x4ff0, len: 0x10 });
    // Through GuestMemory: the device writes where the front-end's mapping says.
    mem.withTranslator(t).write(0x1000_0010, Uint8Array.of(1, 2, 3));
    expect([...mem.read(RAM + 0x3010, 3)]).toEqual([1, 2, 3]);
  });

  it('faults on a permission the entry lacks, and once on a page the front-end refused', () => {
    const { t } = rig();
    t.update(update(0x2000, 0x1000, 0, IotlbPerm.RO));
    expect(() => t.translate(0x2000, 4, 'write')).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    expect(() => t.translate(0x9000, 4, 'read')).toThrow(IotlbMissError);
    t.refuse(0x9000);
    expect(() => t.translate(0x9000, 4, 'read')).toThrow(expect.objectContaining({ code: 'ERR_IOMMU_FAULT' }));
    // The refusal is used once: a later access asks again.
    expect(() => t.translate(0x9000, 4, 'read')).toThrow(IotlbMissError);
  });

  it('refuses bad updates naming the field, and an update over cached entries replaces them', () => {
    const { t } = rig();
    expect(() => t.update(update(0, 0, 0))).toThrow(/size 0/);
    expect(() => t.update(update(0, 0x1000, 0, 7))).toThrow(/permission 7/);
    expect(() => t.update({ ...update(0, 0x1000, 0), iova: 1n << 60n })).toThrow(/beyond 2\^53/);
    t.update(update(0x1000, 0x1000, 0));
    t.update(update(0x2000, 0x1000, 0x1000));
    t.update(update(0x1800, 0x1000, 0x8000));
    expect(t.size).toBe(1);
    expect(t.translate(0x1800, 1, 'read').gpa).toBe(RAM + 0x8000);
  });

  it('strict invalidation: drops the entries at once, acknowledges only after the requests begun before it end', async () => {
    const { t } = rig();
    t.update(update(0x1000, 0x1000, 0));
    const early = t.begin();
    let acked = false;
    const p = t.invalidate(0x1000n, 0x1000n, 5000).then((ok) => (acked = ok));
    expect(() => t.translate(0x1000, 4, 'read')).toThrow(IotlbMissError);
    const late = t.begin(); // began after the invalidation: does not hold it
    await new Promise((r) => setTimeout(r, 10));
    expect(acked).toBe(false);
    t.end(early);
    await p;
    expect(acked).toBe(true);
    t.end(late);
    // Bounded: a request that never ends does not hold the ack forever.
    t.begin();
    expect(await t.invalidate(0n, 0x1000n, 20)).toBe(false);
  });

  it('codec: struct vhost_iotlb_msg round-trips; sizes are checked on both channels', () => {
    const m = { iova: 0x1234_5000n, size: 0x2000n, uaddr: UA, perm: IotlbPerm.WO, type: IotlbType.MISS };
    const b = iotlbMsg.encode(m);
    expect(b.length).toBe(32);
    expect(iotlbMsg.decode(b)).toEqual(m);
    expect(() => validateRequest({ request: Req.IOTLB_MSG, flags: VERSION, payload: b, fds: [] })).not.toThrow();
    expect(() => validateRequest({ request: Req.IOTLB_MSG, flags: VERSION, payload: b.subarray(0, 20), fds: [] })).toThrow(VhostUserProtocolError);
    expect(() => validateBackendRequest({ request: BackendReq.IOTLB_MSG, flags: VERSION, payload: b, fds: [] })).not.toThrow();
    expect(() => validateBackendRequest({ request: BackendReq.IOTLB_MSG, flags: VERSION, payload: new Uint8Array(40), fds: [] })).toThrow(/payload 40 bytes/);
    expect(() => validateBackendRequest({ request: 99, flags: VERSION, payload: new Uint8Array(0), fds: [] })).toThrow(/unsupported back-end request 99/);
    expect(isIotlbMiss(new Error('wrapped', { cause: new IotlbMissError(0, 1, 'read') }))).toBe(true);
    expect(isIotlbMiss(new Error('other'))).toBe(false);
  });
});
