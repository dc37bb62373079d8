import { describe, expect, it } from 'vitest';
import {
  VIRTIO_F_VERSION_1 as VERSION_1, VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_FEATURES_OK,
} from '@vmm/core';
import { INT, MAGIC, REG, VirtioMmioState } from './transport.ts';

function driverProbe(t: VirtioMmioState, kicks: number[], irqs: boolean[], accept: bigint) {
  const kick = (fd: number) => { kicks.push(fd); };
  const irq = (l: boolean) => { irqs.push(l); };
  // The Linux virtio_mmio probe / virtio core sequence (virtio 1.2 §3.1.1, §4.2.3.1).
  expect(t.read(REG.MagicValue, 4)).toBe(MAGIC);
  expect(t.read(REG.Version, 4)).toBe(2);
  t.write(REG.Status, 4, 0, kick, irq);
  t.write(REG.Status, 4, VIRTIO_STATUS_ACKNOWLEDGE, kick, irq);
  t.write(REG.Status, 4, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER, kick, irq);
  t.write(REG.DeviceFeaturesSel, 4, 1, kick, irq);
  const hi = t.read(REG.DeviceFeatures, 4);
  t.write(REG.DeviceFeaturesSel, 4, 0, kick, irq);
  const lo = t.read(REG.DeviceFeatures, 4);
  const offered = (BigInt(hi) << 32n) | BigInt(lo);
  const want = offered & accept;
  t.write(REG.DriverFeaturesSel, 4, 1, kick, irq);
  t.write(REG.DriverFeatures, 4, Number(want >> 32n), kick, irq);
  t.write(REG.DriverFeaturesSel, 4, 0, kick, irq);
  t.write(REG.DriverFeatures, 4, Number(want & 0xffffffffn), kick, irq);
  t.write(REG.Status, 4, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK, kick, irq);
  return { kick, irq, ok: (t.read(REG.Status, 4) & VIRTIO_STATUS_FEATURES_OK) !== 0 };
}

describe('virtio-mmio transport registers (virtio 1.2 §4.2.2)', () => {
  it('reads as an empty slot until a device is plugged', () => {
    const t = new VirtioMmioState();
    expect(t.read(REG.MagicValue, 4)).toBe(MAGIC);
    expect(t.read(REG.DeviceID, 4)).toBe(0);
  });

  it('QueueNumMax is per queue (§4.2.2): each queue takes sizes up to its own maximum, and a driver reset keeps them', () => {
    const t = new VirtioMmioState();
    t.plug(1, VERSION_1, [256, 256, 64], new Uint8Array(8), [3, 4, 5]);
    const { kick, irq } = driverProbe(t, [], [], VERSION_1);
    const max = (q: number): number => {
      t.write(REG.QueueSel, 4, q, kick, irq);
      return t.read(REG.QueueNumMax, 4);
    };
    expect([0, 1, 2, 3].map(max)).toEqual([256, 256, 64, 0]); // 3: no such queue (§4.2.2: 0)
    t.write(REG.QueueSel, 4, 2, kick, irq);
    t.write(REG.QueueNum, 4, 128, kick, irq); // above this queue's maximum: ignored
    expect(t.queue(2).num).not.toBe(128);
    t.write(REG.QueueNum, 4, 64, kick, irq);
    expect(t.queue(2).num).toBe(64);
    t.write(REG.QueueSel, 4, 0, kick, irq);
    t.write(REG.QueueNum, 4, 256, kick, irq);
    expect(t.queue(0).num).toBe(256);
    t.write(REG.Status, 4, 0, kick, irq);
    expect([0, 1, 2].map(max)).toEqual([256, 256, 64]);
    expect(() => t.plug(1, VERSION_1, [256, 96], new Uint8Array(8), [3, 4])).toThrow('queue 1 size 96 is not a power of 2');
  });

  it('negotiates features, sets up a queue, kicks the eventfd and acknowledges interrupts', () => {
    const t = new VirtioMmioState();
    t.plug(2, VERSION_1 | 0x240n, [256, 256], Uint8Array.of(0x00, 0x10, 0, 0, 0, 0, 0, 0), [11, 12]);
    const other = new VirtioMmioState(t.buffer); // another hart's view of the same device
    expect(other.read(REG.DeviceID, 4)).toBe(2);
    expect(other.read(REG.Config + 1, 1)).toBe(0x10);
    expect(other.read(REG.Config, 4)).toBe(0x1000);
    const kicks: number[] = [];
    const irqs: boolean[] = [];
    const before = t.changes;
    const { kick, irq, ok } = driverProbe(other, kicks, irqs, VERSION_1 | 0x200n);
    expect(ok).toBe(true);
    expect(t.driverFeatures()).toBe(VERSION_1 | 0x200n);
    expect(t.changes).toBeGreaterThan(before);
    other.write(REG.QueueSel, 4, 1, kick, irq);
    expect(other.read(REG.QueueNumMax, 4)).toBe(256);
    other.write(REG.QueueNum, 4, 100, kick, irq); // not a power of two: ignored
    other.write(REG.QueueNum, 4, 128, kick, irq);
    other.write(REG.QueueDescLow, 4, 0x8100_0000, kick, irq);
    other.write(REG.QueueDescHigh, 4, 0x1, kick, irq);
    other.write(REG.QueueDriverLow, 4, 0x8100_1000, kick, irq);
    other.write(REG.QueueDeviceLow, 4, 0x8100_2000, kick, irq);
    other.write(REG.QueueReady, 4, 1, kick, irq);
    other.write(REG.QueueDescLow, 4, 0xdead_0000, kick, irq); // ignored once ready
    expect(t.queue(1)).toEqual({ num: 128, ready: true, desc: 0x1_8100_0000n, driver: 0x8100_1000n, device: 0x8100_2000n });
    other.write(REG.QueueNotify, 4, 1, kick, irq);
    other.write(REG.QueueNotify, 4, 5, kick, irq); // no such queue
    expect(kicks).toEqual([12]);
    t.raise(INT.USED_BUFFER, irq);
    expect(other.read(REG.InterruptStatus, 4)).toBe(INT.USED_BUFFER);
    other.write(REG.InterruptACK, 4, INT.USED_BUFFER, kick, irq);
    expect(irqs.at(-1)).toBe(false);
    expect(other.read(REG.InterruptStatus, 4)).toBe(0);
    const resets = t.resets;
    other.write(REG.Status, 4, 0, kick, irq);
    expect(t.resets).toBe(resets + 1);
    expect(t.queue(1).ready).toBe(false);
    expect(other.read(REG.Status, 4)).toBe(0);
  });

  it('refuses FEATURES_OK for features the device did not offer or without VERSION_1', () => {
    const t = new VirtioMmioState();
    t.plug(2, VERSION_1 | 0x4n, [128], new Uint8Array(8), [3]);
    expect(driverProbe(t, [], [], 0x4n).ok).toBe(false);
    const t2 = new VirtioMmioState();
    t2.plug(2, VERSION_1, [128], new Uint8Array(8), [3]);
    // Write a feature the device never offered.
    const kick = () => {};
    const irq = () => {};
    t2.write(REG.DriverFeaturesSel, 4, 0, kick, irq);
    t2.write(REG.DriverFeatures, 4, 0x8, kick, irq);
    t2.write(REG.DriverFeaturesSel, 4, 1, kick, irq);
    t2.write(REG.DriverFeatures, 4, 1, kick, irq);
    t2.write(REG.Status, 4, VIRTIO_STATUS_FEATURES_OK | 3, kick, irq);
    expect(t2.read(REG.Status, 4) & VIRTIO_STATUS_FEATURES_OK).toBe(0);
  });

  it('bumps ConfigGeneration and raises a config interrupt on config change', () => {
    const t = new VirtioMmioState();
    t.plug(2, VERSION_1, [128], new Uint8Array(8), [3]);
    const irqs: boolean[] = [];
    const gen = t.read(REG.ConfigGeneration, 4);
    t.updateConfig(Uint8Array.of(1, 2, 3, 4), (l) => irqs.push(l));
    expect(t.read(REG.ConfigGeneration, 4)).toBe(gen + 1);
    expect(t.read(REG.InterruptStatus, 4) & INT.CONFIG_CHANGE).toBe(INT.CONFIG_CHANGE);
    expect(irqs).toEqual([true]);
  });
});
