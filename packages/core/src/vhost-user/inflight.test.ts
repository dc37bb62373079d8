import { describe, expect, it } from 'vitest';
import { InflightQueue, inflightQueueStride, inflightRegionSize } from './inflight.ts';

describe('inflight region (vhost-user "Inflight I/O tracking", split rings)', () => {
  it('lays queues out every align_up(16 + 16·size, 64) bytes', () => {
    expect(inflightQueueStride(128)).toBe(2112);
    expect(inflightRegionSize(2, 16)).toBe(2 * 320);
  });
  it('a fresh region initialises; begun requests are resubmitted in submission order', () => {
    const buf = new ArrayBuffer(inflightRegionSize(1, 8));
    const a = new InflightQueue(buf, 0, 8);
    expect(a.recover(0)).toBeNull();
    for (const h of [5, 2, 7]) a.begin(h);
    a.beforeUsed(2);
    a.afterUsed(2, 1);
    // A new back-end maps the same region after a crash: used.idx is 1.
    const b = new InflightQueue(buf, 0, 8);
    expect(b.recover(1)).toEqual({ resubmit: [5, 7], lastAvail: 3 });
  });
  it('repairs the last batch when the crash fell between publishing used.idx and clearing the flag', () => {
    const buf = new ArrayBuffer(inflightRegionSize(1, 8));
    const a = new InflightQueue(buf, 0, 8);
    a.recover(0);
    a.begin(1);
    a.begin(3);
    a.beforeUsed(3);
    // used.idx became 1 in the ring, but afterUsed() never ran.
    const b = new InflightQueue(buf, 0, 8);
    expect(b.recover(1)).toEqual({ resubmit: [1], lastAvail: 2 });
    // Counters continue after the largest seen, so resubmission order stays correct.
    b.begin(4);
    expect(new InflightQueue(buf, 0, 8).recover(1)).toEqual({ resubmit: [1, 4], lastAvail: 3 });
  });
});
