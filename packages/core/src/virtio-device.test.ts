import { describe, expect, it } from 'vitest';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1 } from './device.ts';
import {
  VIRTIO_STATUS_ACKNOWLEDGE as A, VIRTIO_STATUS_DRIVER as D, VIRTIO_STATUS_DRIVER_OK as OK, VIRTIO_STATUS_FEATURES_OK as F,
  VIRTIO_STATUS_DEVICE_NEEDS_RESET as NR, VIRTIO_STATUS_FAILED as FAIL, VirtioDeviceLifecycle,
} from './virtio-device.ts';

function make() {
  const events: string[] = [];
  const lc = new VirtioDeviceLifecycle({
    deviceFeatures: VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | 1n,
    activate: (f) => events.push(`activate ${f.toString(16)}`),
    reset: () => events.push('reset'),
    configChanged: () => events.push('config'),
  });
  return { lc, events };
}

function negotiate(lc: VirtioDeviceLifecycle, features: bigint) {
  lc.writeDriverFeaturesWord(0, Number(features & 0xffff_ffffn));
  lc.writeDriverFeaturesWord(1, Number(features >> 32n));
}

describe('VirtioDeviceLifecycle (virtio 1.2 §2.1, §3.1)', () => {
  it('walks ACKNOWLEDGE → DRIVER → FEATURES_OK → DRIVER_OK and resets', () => {
    const { lc, events } = make();
    expect(lc.deviceFeaturesWord(1)).toBe(1);
    expect(lc.deviceFeaturesWord(0)).toBe((1 << 29) | 1);
    expect(lc.writeStatus(A)).toBe(true);
    expect(lc.writeStatus(A | D)).toBe(true);
    negotiate(lc, VIRTIO_F_VERSION_1 | 1n);
    expect(lc.writeStatus(A | D | F)).toBe(true);
    expect(lc.status & F).toBe(F);
    expect(lc.state).toBe('features-ok');
    expect(lc.writeStatus(A | D | F | OK)).toBe(true);
    expect(lc.state).toBe('running');
    expect(events).toEqual(['activate 100000001']);
    lc.writeStatus(0);
    expect(lc.state).toBe('reset');
    expect(lc.driverFeatures).toBe(0n);
    expect(events).toEqual(['activate 100000001', 'reset']);
  });
  it('FEATURES_OK does not stick for unoffered features or without VERSION_1', () => {
    const { lc } = make();
    lc.writeStatus(A | D);
    negotiate(lc, VIRTIO_F_VERSION_1 | (1n << 5n));
    expect(lc.writeStatus(A | D | F)).toBe(false);
    expect(lc.status & F).toBe(0);
    expect(lc.lastRefusal).toMatch(/0x20/);
    negotiate(lc, 1n);
    expect(lc.writeStatus(A | D | F)).toBe(false);
    expect(lc.lastRefusal).toMatch(/VERSION_1/);
  });
  it('refuses out-of-order bits, cleared bits, and feature changes after FEATURES_OK', () => {
    const { lc, events } = make();
    expect(lc.writeStatus(A | D | OK)).toBe(false);
    expect(lc.status).toBe(0);
    lc.writeStatus(A | D);
    expect(lc.writeStatus(A)).toBe(false);
    negotiate(lc, VIRTIO_F_VERSION_1);
    lc.writeStatus(A | D | F);
    lc.writeDriverFeaturesWord(0, 1);
    expect(lc.driverFeatures).toBe(VIRTIO_F_VERSION_1);
    expect(events).toEqual([]);
  });
  it('FAILED sticks until reset; NEEDS_RESET raises a config change while running', () => {
    const { lc, events } = make();
    lc.writeStatus(A | D);
    negotiate(lc, VIRTIO_F_VERSION_1);
    lc.writeStatus(A | D | F | OK);
    lc.needsReset();
    expect(lc.status & NR).toBe(NR);
    expect(events).toEqual(['activate 100000000', 'config']);
    expect(lc.writeStatus(A | D | F | OK | FAIL)).toBe(true);
    expect(lc.state).toBe('failed');
    lc.writeStatus(0);
    expect(lc.status).toBe(0);
    expect(events.at(-1)).toBe('reset');
  });
});
