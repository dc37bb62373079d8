import { describe, expect, it } from 'vitest';
import { readyQueueSizes } from './device-main.ts';

describe('readyQueueSizes (per-queue QueueNumMax from a device process handshake)', () => {
  it("takes each queue's size, capped by the kind's maximum; the cap when the process says nothing", () => {
    expect(readyQueueSizes({ queueSizes: [256, 1024, 64] }, 3, 256)).toEqual([256, 256, 64]);
    expect(readyQueueSizes({ socket: 's' }, 2, 256)).toEqual([256, 256]);
  });
  it('refuses sizes that are missing or not powers of 2, naming them', () => {
    expect(() => readyQueueSizes({ queueSizes: [256] }, 2, 256)).toThrow('queueSizes=[256]: expected 2 queue sizes');
    expect(() => readyQueueSizes({ queueSizes: [256, 96] }, 2, 256)).toThrow('queue 1 size 96 is not a power of 2');
    expect(() => readyQueueSizes({ queueSizes: 'x' }, 1, 256)).toThrow('queueSizes="x"');
  });
});
