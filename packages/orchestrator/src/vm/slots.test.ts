// Protocol test of the generic device path, with no guest: the test plays
// the guest's virtio driver on real virtio-mmio transport registers, over
// real guest RAM (a memfd) and real eventfds, while the orchestrator's
// DeviceSlots plug real device processes and talk vhost-user to them. The
// device kind is the test-only echo device (@vmm/core/testing): it reaches
// the orchestrator through its registration alone — one registry line —
// and is plugged, hot-added, killed and recovered, asks for a reset, and is
// hot-removed, exactly as a disk would be.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  closeFd, createLogger, DriverQueue, eventfdWrite, GuestMemory, memfdCreate, mmapShared, splitQueueLayout, VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1,
  VIRTIO_STATUS_ACKNOWLEDGE, VIRTIO_STATUS_DEVICE_NEEDS_RESET, VIRTIO_STATUS_DRIVER, VIRTIO_STATUS_DRIVER_OK, VIRTIO_STATUS_FEATURES_OK,
} from '@vmm/core';
import { ECHO_BREAK, ECHO_CONFIG, ECHO_DIE, ECHO_HOLD, ECHO_RELEASE, echoKind } from '@vmm/core/testing';
import { VIRTIO_INT, VIRTIO_MMIO_REG as REG, VirtioMmioState } from '@vmm/vcpu';
import { blkKind } from '@vmm/virtio-blk/kind';
import { parseRunArgs } from '../cli/args.ts';
import { DEVICE_KINDS, DeviceRegistry } from './kinds.ts';
import { DeviceSlots } from './slots.ts';

const RAM_BASE = 0x8000_0000;
const RAM_SIZE = 4 << 20;
const QSIZE = 16;
// The orchestrator's shape: role and pid bound, no device (lines about a device name it themselves).
const log = createLogger('slots-test', undefined, 'warn');
const dir = mkdtempSync(join(tmpdir(), 'vmm-slots-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A guest with no CPU: RAM in a memfd, slots' registers, interrupt lines, events. */
function rig(kinds = [...DEVICE_KINDS, echoKind]) {
  const ramFd = memfdCreate('guest-ram', RAM_SIZE);
  const ram = mmapShared(ramFd, RAM_SIZE);
  const mem = GuestMemory.fromBuffers([{ gpa: RAM_BASE, buffer: ram }]);
  const view = new DataView(ram);
  const transports = [new VirtioMmioState(), new VirtioMmioState()];
  const lines = transports.map(() => ({ level: false, raised: 0 }));
  const events: { event: string; data: Record<string, unknown> }[] = [];
  const slots = new DeviceSlots({
    transports,
    irq: (i) => (level) => {
      lines[i]!.level = level;
      if (level) lines[i]!.raised++;
    },
    ramFd,
    ramBase: RAM_BASE,
    memBytes: RAM_SIZE,
    readGuestU16: (gpa) => view.getUint16(Number(gpa) - RAM_BASE, true),
    runDir: mkdtempSync(join(dir, 'run-')),
    log,
    logLevel: 'warn',
    emit: (event, data) => events.push({ event, data }),
    registry: new DeviceRegistry(kinds),
  });
  let next = RAM_BASE + 0x1000;
  const alloc = (len: number, align = 16): number => {
    const a = Math.ceil(next / align) * align;
    next = a + len;
    return a;
  };
  return { ramFd, mem, transports, lines, events, slots, alloc };
}
type Rig = ReturnType<typeof rig>;

const rigs: Rig[] = [];
afterEach(async () => {
  for (const r of rigs.splice(0)) {
    await r.slots.close();
    closeFd(r.ramFd);
  }
});

async function until<T>(what: string, f: () => T | undefined | null | false, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const noKick = (): void => {};
const noIrq = (): void => {};

/** Find the slot a device went to: the one whose DeviceID reads non-zero. */
function slotOf(r: Rig, deviceId: number): VirtioMmioState {
  const t = r.transports.find((x) => x.read(REG.DeviceID, 4) === deviceId);
  if (!t) throw new Error(`no slot reads DeviceID ${deviceId}`);
  return t;
}

/** The Linux virtio_mmio probe sequence (virtio 1.2 §3.1.1, §4.2.3), one queue, EVENT_IDX on. */
function driverInit(r: Rig, t: VirtioMmioState, beforeDriverOk?: (dq: DriverQueue) => void): DriverQueue {
  const w = (reg: number, v: number) => t.write(reg, 4, v, noKick, noIrq);
  w(REG.Status, 0);
  w(REG.Status, VIRTIO_STATUS_ACKNOWLEDGE);
  w(REG.Status, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  w(REG.DeviceFeaturesSel, 1);
  const hi = BigInt(t.read(REG.DeviceFeatures, 4));
  w(REG.DeviceFeaturesSel, 0);
  const offered = (hi << 32n) | BigInt(t.read(REG.DeviceFeatures, 4));
  const accept = offered & (VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | 1n);
  w(REG.DriverFeaturesSel, 0);
  w(REG.DriverFeatures, Number(accept & 0xffff_ffffn));
  w(REG.DriverFeaturesSel, 1);
  w(REG.DriverFeatures, Number(accept >> 32n));
  w(REG.Status, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  expect(t.read(REG.Status, 4) & VIRTIO_STATUS_FEATURES_OK).toBe(VIRTIO_STATUS_FEATURES_OK);
  const l = splitQueueLayout(r.alloc(splitQueueLayout(0, QSIZE).end + 16, 4096), QSIZE);
  w(REG.QueueSel, 0);
  expect(t.read(REG.QueueNumMax, 4)).toBe(echoKind.maxQueueSize);
  w(REG.QueueNum, QSIZE);
  w(REG.QueueDescLow, l.desc); w(REG.QueueDescHigh, 0);
  w(REG.QueueDriverLow, l.avail); w(REG.QueueDriverHigh, 0);
  w(REG.QueueDeviceLow, l.used); w(REG.QueueDeviceHigh, 0);
  w(REG.QueueReady, 1);
  const dq = new DriverQueue(r.mem, { size: QSIZE, desc: l.desc, avail: l.avail, used: l.used, eventIdx: (accept & VIRTIO_F_EVENT_IDX) !== 0n });
  // A driver may populate its queues before DRIVER_OK (virtio 1.2 §3.1.1 step 7), though it notifies only after.
  beforeDriverOk?.(dq);
  w(REG.Status, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
  return dq;
}

/** Post an echo request and notify (QueueNotify → kick eventfd, as a vCPU does). */
function post(r: Rig, t: VirtioMmioState, dq: DriverQueue, data: number[], c: { done: Map<number, number> }): { head: number; out: number } {
  const src = r.alloc(data.length);
  r.mem.write(src, new Uint8Array(data));
  const out = r.alloc(8);
  const head = dq.add([{ addr: src, len: data.length, write: false }, { addr: out, len: 8, write: true }]);
  if (head === null) throw new Error('ring full');
  // Heads are reused once completed: forget what an earlier request with this head got.
  c.done.delete(head);
  dq.publish();
  if (dq.kickNeeded()) t.write(REG.QueueNotify, 4, 0, (fd) => eventfdWrite(fd), noIrq);
  return { head, out };
}

function collector(dq: DriverQueue) {
  const done = new Map<number, number>();
  return {
    done,
    poll: () => {
      for (let u = dq.popUsed(); u !== null; u = dq.popUsed()) done.set(u.head, u.len);
      return done;
    },
  };
}

describe('the generic vhost-user device path (echo kind, no guest)', () => {
  it('reports BACKEND_STALLED with each ring\'s indices and inflight heads when a restarted back-end completes nothing', async () => {
    const r = rig();
    rigs.push(r);
    await r.slots.deviceAdd({ driver: 'echo', id: 's0', queues: 1 });
    const t = slotOf(r, echoKind.virtioId);
    const dq = driverInit(r, t);
    const c = collector(dq);
    const a = post(r, t, dq, [1], c);
    await until('the first echo', () => c.poll().has(a.head));
    // The held request never completes on its own: after the restart the guest waits, and the watchdog must say so.
    const held = post(r, t, dq, [ECHO_HOLD, 7], c);
    const n0 = r.events.length;
    await r.slots.injectFault({ kind: 'kill', device: 's0' });
    await until('BACKEND_RESTARTED', () => r.events.slice(n0).find((e) => e.event === 'BACKEND_RESTARTED'));
    const stall = await until('BACKEND_STALLED', () => r.events.slice(n0).find((e) => e.event === 'BACKEND_STALLED'), 30_000);
    expect(stall.data).toMatchObject({ device: 's0', restarts: 1, rings: [{ queue: 0, availIdx: 2, usedIdx: 1, outstanding: 1, inflight: [held.head] }] });
    // It was a diagnosis, not a verdict: the request completes once released, and nothing else was lost.
    const rel = post(r, t, dq, [ECHO_RELEASE, 8], c);
    await until('the held request and its release', () => c.poll().has(held.head) && c.done.has(rel.head));
  });

  it('a back-end that dies while its rings are being started, right after completing a request, does not get that request again', async () => {
    const r = rig();
    rigs.push(r);
    await r.slots.deviceAdd({ driver: 'echo', id: 'd0', queues: 1 });
    const t = slotOf(r, echoKind.virtioId);
    const n0 = r.events.length;
    // The request is on the ring when the rings start: the back-end completes it and dies before it acknowledges
    // SET_VRING_ENABLE, so the rings were never all started as far as the front-end knows. The next session must
    // start the ring at the used index (1), not at 0, or the completed request runs again (and kills it again).
    let die = -1;
    const dq = driverInit(r, t, (q) => {
      const src = r.alloc(1);
      r.mem.write(src, new Uint8Array([ECHO_DIE]));
      die = q.add([{ addr: src, len: 1, write: false }, { addr: r.alloc(8), len: 8, write: true }])!;
      q.publish();
    });
    const restarted = await until('BACKEND_RESTARTED', () => r.events.slice(n0).find((e) => e.event === 'BACKEND_RESTARTED'));
    expect(restarted.data).toMatchObject({ device: 'd0', restarts: 1 });
    const used: number[] = [];
    const c = { done: new Map<number, number>() };
    const next = post(r, t, dq, [4, 5], c);
    await until('the next echo', () => {
      for (let u = dq.popUsed(); u !== null; u = dq.popUsed()) { used.push(u.head); c.done.set(u.head, u.len); }
      return c.done.has(next.head);
    });
    expect(used.filter((h) => h === die)).toHaveLength(1);
    expect(r.events.slice(n0).filter((e) => e.event === 'BACKEND_RESTARTED' || e.event === 'BACKEND_FAILED').map((e) => e.event)).toEqual(['BACKEND_RESTARTED']);
    expect(r.slots.devices()[0]!.restarts).toBe(1);
  });

  it("offers each queue its own QueueNumMax (virtio 1.2 §4.2.2), the device model's maximum from the process's handshake", async () => {
    const r = rig();
    rigs.push(r);
    await r.slots.deviceAdd({ driver: 'echo', id: 'q0', queues: 3, 'last-queue-size': 64 });
    const t = slotOf(r, echoKind.virtioId);
    const max = (q: number): number => {
      t.write(REG.QueueSel, 4, q, noKick, noIrq);
      return t.read(REG.QueueNumMax, 4);
    };
    expect([0, 1, 2, 3].map(max)).toEqual([echoKind.maxQueueSize, echoKind.maxQueueSize, 64, 0]);
  });

  it('plugs, serves, recovers a killed process with its in-flight requests, asks for a reset and hot-removes a test-only kind', async () => {
    const r = rig();
    rigs.push(r);
    await r.slots.deviceAdd({ driver: 'echo', id: 'e0', queues: 1 });
    const t = slotOf(r, echoKind.virtioId);
    expect(r.slots.processes(() => ({ rssBytes: null, sharedMemfdBytes: null, ownBytes: null }))).toMatchObject([{ id: 'e0', role: 'echo', state: 'running', restarts: 0 }]);
    const dq = driverInit(r, t);
    const c = collector(dq);
    const slot = r.transports.indexOf(t);

    const a = post(r, t, dq, [1, 2, 3], c);
    await until('the first echo', () => c.poll().has(a.head));
    expect(c.done.get(a.head)).toBe(3);
    expect([...r.mem.read(a.out, 3)]).toEqual([1, 2, 3]);
    // The call eventfd reaches the interrupt line (irqfd) on its own turn of the event loop, which may come after the
    // used entry is visible in the ring: wait for it rather than expect it at once.
    await until('the interrupt', () => r.lines[slot]!.raised > 0);
    expect(t.read(REG.InterruptStatus, 4) & VIRTIO_INT.USED_BUFFER).toBe(VIRTIO_INT.USED_BUFFER);

    // A request held in the device when its process is killed is resubmitted by the restarted one (inflight region).
    const held = post(r, t, dq, [ECHO_HOLD, 7], c);
    const pid0 = r.slots.devices()[0]!.pid;
    const restarts0 = r.events.length;
    await r.slots.injectFault({ kind: 'kill', device: 'e0' });
    const restarted = await until('BACKEND_RESTARTED', () => r.events.slice(restarts0).find((e) => e.event === 'BACKEND_RESTARTED'));
    expect(restarted.data).toMatchObject({ device: 'e0', driver: 'echo', restarts: 1 });
    expect(restarted.data.pid).not.toBe(pid0);
    expect(c.poll().get(held.head)).toBeUndefined();
    const rel = post(r, t, dq, [ECHO_RELEASE, 8], c);
    await until('the held request and its release', () => c.poll().has(held.head) && c.done.has(rel.head));
    expect(c.done.get(held.head)).toBe(2);
    expect([...r.mem.read(held.out, 2)]).toEqual([ECHO_HOLD, 7]);
    expect(r.slots.processes(() => ({ rssBytes: null, sharedMemfdBytes: null, ownBytes: null }))).toMatchObject([{ id: 'e0', role: 'echo', state: 'running', restarts: 1 }]);

    // A kind-specific fault the echo kind does not have: named, with the ones it has.
    await expect(r.slots.injectFault({ kind: 'enospc', device: 'e0' })).rejects.toThrow("inject-fault: kind=enospc: unknown fault for echo (kill, pause, resume, delay-calls)");
    // The IOMMU's faults: an unknown device, a kind without them, a VM without an IOMMU — GenericError naming each.
    await expect(r.slots.injectFault({ kind: 'stray-dma', device: 'nosuch' })).rejects.toMatchObject({ errorClass: 'GenericError', message: 'inject-fault: device=nosuch: no such device (devices: e0)' });
    await expect(r.slots.injectFault({ kind: 'stray-dma', device: 'e0' })).rejects.toMatchObject({ errorClass: 'GenericError', message: 'inject-fault: kind=stray-dma: does not apply to echo e0 (its faults: none)' });
    await expect(r.slots.injectFault({ kind: 'iommu-kill', device: 'e0' })).rejects.toMatchObject({ errorClass: 'GenericError', message: 'inject-fault: kind=iommu-kill: echo e0 is not behind an IOMMU (the VM has no --iommu)' });

    // The device changes its configuration space: the back-end channel (BACKEND_REQ) carries CONFIG_CHANGE_MSG, the
    // orchestrator reads the config again and the driver gets a configuration change interrupt (virtio 1.2 §2.5.1).
    t.write(REG.InterruptACK, 4, 0xff, noKick, noIrq);
    const gen0 = t.read(REG.ConfigGeneration, 4);
    const cfg = post(r, t, dq, [ECHO_CONFIG, 0x5a], c);
    await until('the new configuration', () => t.read(REG.Config + 4, 1) === 0x5a);
    expect(t.read(REG.ConfigGeneration, 4)).toBe(gen0 + 1);
    expect(t.read(REG.InterruptStatus, 4) & VIRTIO_INT.CONFIG_CHANGE).toBe(VIRTIO_INT.CONFIG_CHANGE);
    expect(c.poll().get(cfg.head)).toBe(2);
    t.write(REG.InterruptACK, 4, 0xff, noKick, noIrq);

    // The device asks for a reset: DEVICE_NEEDS_RESET and a configuration change interrupt reach the driver (virtio 1.2 §2.1.2).
    const brk = post(r, t, dq, [ECHO_BREAK], c);
    await until('DEVICE_NEEDS_RESET', () => t.read(REG.Status, 4) & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
    expect(t.read(REG.InterruptStatus, 4) & VIRTIO_INT.CONFIG_CHANGE).toBe(VIRTIO_INT.CONFIG_CHANGE);
    expect(c.poll().get(brk.head)).toBe(1);
    expect(r.events.find((e) => e.event === 'DEVICE_NEEDS_RESET')?.data).toMatchObject({ device: 'e0', driver: 'echo' });

    // The driver resets and starts over; the device serves again.
    const dq2 = driverInit(r, t);
    const c2 = collector(dq2);
    const b = post(r, t, dq2, [9, 9], c2);
    await until('an echo after the reset', () => c2.poll().has(b.head));
    expect(c2.done.get(b.head)).toBe(2);

    // Hot-remove: the same eject signal for every kind (no disk capacity involved): NEEDS_RESET + EJCT; the driver lets go by resetting.
    await r.slots.deviceDel('e0');
    expect(t.read(REG.Status, 4) & VIRTIO_STATUS_DEVICE_NEEDS_RESET).toBe(VIRTIO_STATUS_DEVICE_NEEDS_RESET);
    expect(t.read(REG.VendorID, 4)).toBe(0x5443_4a45);
    await expect(r.slots.deviceDel('e0')).rejects.toThrow(/already in the process of unplug/);
    t.write(REG.Status, 4, 0, noKick, noIrq);
    await until('DEVICE_DELETED', () => r.events.find((e) => e.event === 'DEVICE_DELETED'));
    expect(t.present).toBe(false);
    expect(r.slots.devices()).toEqual([]);

    // Hot-add again into the emptied slot: a fresh process, a fresh session.
    await r.slots.deviceAdd({ driver: 'echo', id: 'e1', queues: 1 });
    const t2 = slotOf(r, echoKind.virtioId);
    const dq3 = driverInit(r, t2);
    const c3 = collector(dq3);
    const d = post(r, t2, dq3, [5], c3);
    await until('an echo from the hot-added device', () => c3.poll().has(d.head));
    expect(c3.done.get(d.head)).toBe(1);

    // A device its driver already let go of (the guest's agent releases a device that needs a reset, e.g. a
    // given-up back-end) is removed at once: nobody is left to reset it. Linux's virtio core writes ACKNOWLEDGE
    // again after a driver's removal, so a released device reads status 1.
    t2.write(REG.Status, 4, 0, noKick, noIrq);
    t2.write(REG.Status, 4, VIRTIO_STATUS_ACKNOWLEDGE, noKick, noIrq);
    const deleted = r.events.filter((e) => e.event === 'DEVICE_DELETED').length;
    await r.slots.deviceDel('e1');
    await until('DEVICE_DELETED of a released device', () => r.events.filter((e) => e.event === 'DEVICE_DELETED').length > deleted);
    expect(t2.present).toBe(false);
  });

  it('bad device options and kinds get one error naming the option and value, the same from the flag, QMP and the device process', async () => {
    const r = rig();
    rigs.push(r);
    const fromQmp = async (args: Record<string, unknown>): Promise<string> => {
      try {
        await r.slots.deviceAdd(args);
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error('device_add accepted bad input');
    };
    const fromFlag = (argv: string[]): string => {
      try {
        parseRunArgs(argv);
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error('vmm run accepted bad input');
    };
    const fromProcess = (main: string, argv: string[]): string => {
      const p = spawnSync(process.execPath, [main, '--socket', join(dir, 'never.sock'), ...argv], { encoding: 'utf8', timeout: 60_000 });
      expect(p.status).toBe(2);
      return p.stderr;
    };
    const cases: { qmp: Record<string, unknown>; flag: string; argv: string[]; want: string }[] = [
      { qmp: { driver: 'virtio-blk', id: 'x', file: 'a.img', queues: 99 }, flag: 'virtio-blk,file=a.img,queues=99', argv: ['--file', 'a.img', '--queues', '99'], want: 'virtio-blk: queues=99: expected an integer from 1 to 16' },
      { qmp: { driver: 'virtio-blk', id: 'x', file: 'a.img', bogus: 1 }, flag: 'virtio-blk,file=a.img,bogus=1', argv: ['--file', 'a.img', '--bogus', '1'], want: "virtio-blk: unknown option 'bogus' (file, format, readonly, queues, serial, iommu-table, iommu-endpoint, iommu-reader, iotlb)" },
      { qmp: { driver: 'virtio-blk', id: 'x', file: 'a.img', format: 'vmdk' }, flag: 'virtio-blk,file=a.img,format=vmdk', argv: ['--file', 'a.img', '--format', 'vmdk'], want: 'virtio-blk: format=vmdk: expected raw or qcow2' },
      { qmp: { driver: 'virtio-blk', id: 'x', file: 'a.img', readonly: 'maybe' }, flag: 'virtio-blk,file=a.img,readonly=maybe', argv: ['--file', 'a.img', '--readonly', 'maybe'], want: 'virtio-blk: readonly=maybe: expected on or off' },
    ];
    for (const k of cases) {
      expect(await fromQmp(k.qmp)).toBe(k.want);
      expect(fromFlag(['--device', k.flag])).toBe(`--device ${k.flag}: ${k.want}`);
      expect(fromProcess(blkKind.main, k.argv)).toContain(`vmm-blk: ${k.want}\n`);
    }
    // Every registered kind, in the same words from the three: its first integer option, one past its limit.
    const checked: string[] = [];
    for (const kind of DEVICE_KINDS) {
      const def = kind.options.find((o) => o.type === 'int');
      if (!def || def.type !== 'int') continue;
      checked.push(kind.name);
      const bad = def.max + 1;
      const want = `${kind.name}: ${def.name}=${bad}: expected an integer from ${def.min} to ${def.max}`;
      expect(await fromQmp({ driver: kind.name, id: 'x', [def.name]: bad })).toBe(want);
      expect(fromFlag(['--device', `${kind.name},${def.name}=${bad}`])).toBe(`--device ${kind.name},${def.name}=${bad}: ${want}`);
      expect(fromProcess(kind.main, [`--${def.name}`, String(bad)])).toContain(`${want}\n`);
    }
    expect(checked).toEqual(DEVICE_KINDS.filter((k) => k.options.some((o) => o.type === 'int')).map((k) => k.name));
    expect(checked).toContain('virtio-blk');
    // The test-only kind's process parses with the same schema and words.
    expect(await fromQmp({ driver: 'echo', id: 'x', queues: 0 })).toBe('echo: queues=0: expected an integer from 1 to 16');
    expect(fromProcess(echoKind.main, ['--queues', '0'])).toContain('echo: queues=0: expected an integer from 1 to 16');
    // An unknown driver names itself and the registered kinds; the flag says the same.
    const known = DEVICE_KINDS.map((k) => k.name).join(', ');
    expect(await fromQmp({ driver: 'virtio-gpu', id: 'x' })).toBe(`driver=virtio-gpu: unknown device kind (${known}, echo)`);
    expect(fromFlag(['--device', 'virtio-gpu'])).toBe(`--device virtio-gpu: driver=virtio-gpu: unknown device kind (${known})`);
    expect(r.slots.devices()).toEqual([]);
  });

  it('refuses a back-end that announces protocol features its kind does not allow, with the features named', async () => {
    // The echo process asks for INFLIGHT_SHMFD; a kind that does not allow inflight tracking must not accept it.
    const strict = { ...echoKind, name: 'echo-strict', protocolFeatures: 0n };
    const r = rig([strict]);
    rigs.push(r);
    await expect(r.slots.deviceAdd({ driver: 'echo-strict', id: 's0', queues: 1 })).rejects.toThrow(
      'echo-strict s0: the back-end announces vhost-user protocol features INFLIGHT_SHMFD that echo-strict does not allow',
    );
    expect(r.slots.devices()).toEqual([]);
    expect(r.transports.every((x) => !x.present)).toBe(true);
  });
});
