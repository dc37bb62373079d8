import { guestAddress } from '@vmm/core';
import { describe, expect, it } from 'vitest';
import { DmaFaults } from './dma-faults.ts';
import type { ChainBuffers } from './request.ts';

const seg = (addr: number, len: number) => ({ addr: guestAddress(addr), len });
/** A read: header (device-readable), data and status (device-writable), as Linux's virtio_blk lays it out. */
const read: ChainBuffers = { readable: [seg(0x1000, 16)], writable: [seg(0x2000, 4096), seg(0x3000, 1)] };
/** A write: header and data readable, status writable. */
const write: ChainBuffers = { readable: [seg(0x1000, 16), seg(0x2000, 4096)], writable: [seg(0x3000, 1)] };
/** A flush moves no data. */
const flush: ChainBuffers = { readable: [seg(0x1000, 16)], writable: [seg(0x3000, 1)] };

describe('DmaFaults', () => {
  it('stray-dma moves the first data buffer of the next data request, once; other chains pass untouched', () => {
    const f = new DmaFaults();
    expect(f.displace(read)).toBe(read);
    f.armStray(0x8010_0000);
    expect(f.displace(flush)).toBe(flush); // no data: the fault waits for a request that has some
    const r = f.displace(read);
    expect(r.writable.map((s) => [Number(s.addr), s.len])).toEqual([[0x8010_0000, 4096], [0x3000, 1]]);
    expect(r.readable).toBe(read.readable);
    expect(f.displace(read)).toBe(read);
    f.armStray(0x9000);
    expect(f.displace(write).readable.map((s) => Number(s.addr))).toEqual([0x1000, 0x9000]);
    expect(() => f.armStray(-1)).toThrow('stray-dma: iova=-1 is not an address');
  });

  it('unmap-race holds the next data request, says which buffer, and hands its result to whoever asks', async () => {
    const f = new DmaFaults();
    await expect(f.raceResult()).rejects.toThrow('no race was armed');
    expect(() => f.armRace(0, 'after-translate')).toThrow('hold-ms=0 must be 1..4000');
    const held = f.armRace(100, 'after-translate');
    expect(() => f.armRace(100, 'after-translate')).toThrow('already armed');
    expect(f.takeRace(flush)).toBeNull();
    const t = f.takeRace(read)!;
    expect(t).toMatchObject({ holdMs: 100, phase: 'after-translate', held: { iova: 0x2000, len: 4096, access: 'write' } });
    expect(await held).toBe(t.held);
    expect(f.takeRace(read)).toBeNull(); // once
    f.finishRace({ status: 0, accessesEndedNs: 2, resumedNs: 1 });
    expect(await f.raceResult()).toEqual({ status: 0, accessesEndedNs: 2, resumedNs: 1 });
  });
});
