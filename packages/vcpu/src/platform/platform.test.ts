import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { IRQ, MMIO } from '../layout.ts';
import { HSM, MIP, RUN } from '../signals.ts';
import { createPlatform, createPlatformState, PlatformConfigError, type Platform } from './index.ts';
import { PlicError } from './plic.ts';

const MiB = 1024 * 1024;

function platform(harts = 2): { p: Platform; state: ReturnType<typeof createPlatformState> } {
  const state = createPlatformState({ harts, memBytes: 64 * MiB });
  return { p: createPlatform(state, 0), state };
}

const PLIC = MMIO.plic.base;
const plicEnable = (ctx: number): number => PLIC + 0x2000 + ctx * 0x80;
const plicThreshold = (ctx: number): number => PLIC + 0x20_0000 + ctx * 0x1000;
const plicClaim = (ctx: number): number => plicThreshold(ctx) + 4;

describe('platform state', () => {
  it('rejects a bad hart count and RAM size, naming the value', () => {
    expect(() => createPlatformState({ harts: 0, memBytes: MiB })).toThrow(PlatformConfigError);
    expect(() => createPlatformState({ harts: 9, memBytes: MiB })).toThrow(/got 9/);
    expect(() => createPlatformState({ harts: 1, memBytes: 1000 })).toThrow(/got 1000/);
  });

  it('is structured-cloneable and a clone drives the same devices', () => {
    const { p, state } = platform();
    const clone = structuredClone(state);
    const q = createPlatform(clone, 1);
    q.bus.store(PLIC + 4 * 5, 4, 3n, 1);
    expect(p.bus.load(PLIC + 4 * 5, 4, 0)).toBe(3n);
  });
});

describe('PhysBus', () => {
  it('faults on unmapped addresses and on accesses straddling a window', () => {
    const { p } = platform();
    expect(p.bus.load(0x0, 4, 0)).toBeNull();
    expect(p.bus.store(0x3000_0000, 4, 1n, 0)).toBe(false);
    expect(p.bus.load(MMIO.rtc.base + MMIO.rtc.size - 2, 4, 0)).toBeNull();
    expect(p.bus.load(MMIO.uart0.base + 5, 1, 0)).not.toBeNull();
  });
});

describe('PLIC (sifive,plic-1.0.0)', () => {
  it('claims the highest-priority enabled source above threshold and drives SEIP/MEIP', () => {
    const { p } = platform();
    const S1 = 3; // hart 1 S-mode context
    p.bus.store(PLIC + 4 * 7, 4, 2n, 0);
    p.bus.store(PLIC + 4 * 9, 4, 5n, 0);
    p.bus.store(plicEnable(S1), 4, (1n << 7n) | (1n << 9n), 0);
    p.plic.setLevel(7, true);
    expect(p.signals.irq(1) & MIP.SEIP).toBe(MIP.SEIP);
    expect(p.signals.irq(1) & MIP.MEIP).toBe(0);
    expect(p.signals.irq(0) & (MIP.SEIP | MIP.MEIP)).toBe(0);
    p.plic.setLevel(9, true);
    // pending bitmap reflects both
    expect(p.bus.load(PLIC + 0x1000, 4, 0)).toBe((1n << 7n) | (1n << 9n));
    // threshold 5 masks both (priority must be strictly greater)
    p.bus.store(plicThreshold(S1), 4, 5n, 1);
    expect(p.signals.irq(1) & MIP.SEIP).toBe(0);
    p.bus.store(plicThreshold(S1), 4, 0n, 1);
    expect(p.bus.load(plicClaim(S1), 4, 1)).toBe(9n);
    expect(p.bus.load(plicClaim(S1), 4, 1)).toBe(7n);
    expect(p.bus.load(plicClaim(S1), 4, 1)).toBe(0n); // both in service
    expect(p.signals.irq(1) & MIP.SEIP).toBe(0);
    // completing 9 while its line is still high makes it pending again (level gateway)
    p.bus.store(plicClaim(S1), 4, 9n, 1);
    expect(p.signals.irq(1) & MIP.SEIP).toBe(MIP.SEIP);
    p.plic.setLevel(9, false);
    expect(p.signals.irq(1) & MIP.SEIP).toBe(0);
    p.plic.setLevel(7, false);
    p.bus.store(plicClaim(S1), 4, 7n, 1);
    expect(p.bus.load(PLIC + 0x1000, 4, 0)).toBe(0n);
  });

  it('ties go to the lowest id; priority 0 never interrupts; M context drives MEIP', () => {
    const { p } = platform(1);
    p.bus.store(plicEnable(0), 4, (1n << 4n) | (1n << 6n), 0);
    p.plic.setLevel(6, true);
    p.plic.setLevel(4, true);
    expect(p.signals.irq(0) & MIP.MEIP).toBe(0); // priorities still 0
    p.bus.store(PLIC + 4 * 4, 4, 1n, 0);
    p.bus.store(PLIC + 4 * 6, 4, 1n, 0);
    expect(p.signals.irq(0) & MIP.MEIP).toBe(MIP.MEIP);
    expect(p.bus.load(plicClaim(0), 4, 0)).toBe(4n);
  });

  it('priority and threshold are WARL 3-bit fields; source 0 cannot be enabled; only 32-bit accesses', () => {
    const { p } = platform(1);
    p.bus.store(PLIC + 4 * 1, 4, 0xffn, 0);
    expect(p.bus.load(PLIC + 4 * 1, 4, 0)).toBe(7n);
    p.bus.store(plicEnable(1), 4, 0xffff_ffffn, 0);
    expect(p.bus.load(plicEnable(1), 4, 0)).toBe(0xffff_fffen);
    expect(p.bus.load(PLIC, 8, 0)).toBeNull();
    expect(p.bus.store(PLIC + 2, 2, 0n, 0)).toBe(false);
    expect(() => p.plic.setLevel(96, true)).toThrow(PlicError);
    expect(() => p.plic.setLevel(0, true)).toThrow(/got 0/);
  });

  it('a completion for a source not enabled in that context is ignored', () => {
    const { p } = platform(2);
    p.bus.store(PLIC + 4 * 3, 4, 1n, 0);
    p.bus.store(plicEnable(1), 4, 1n << 3n, 0);
    p.plic.setLevel(3, true);
    expect(p.bus.load(plicClaim(1), 4, 0)).toBe(3n);
    p.bus.store(plicClaim(3), 4, 3n, 1); // hart 1's context has 3 disabled
    expect(p.bus.load(plicClaim(1), 4, 0)).toBe(0n); // still in service
    p.bus.store(plicClaim(1), 4, 3n, 0);
    expect(p.bus.load(plicClaim(1), 4, 0)).toBe(3n);
  });

  it('a line raised from another thread interrupts this thread’s view', async () => {
    const { p, state } = platform(1);
    p.bus.store(PLIC + 4 * 8, 4, 1n, 0);
    p.bus.store(plicEnable(1), 4, 1n << 8n, 0);
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.url).then(({ createPlatform }) => {
        const q = createPlatform(workerData.state, 0);
        q.plic.setLevel(8, true);
        parentPort.postMessage('done');
      });`;
    const w = new Worker(src, { eval: true, workerData: { state, url: new URL('./index.ts', import.meta.url).href } });
    await new Promise<void>((resolve, reject) => { w.once('message', () => resolve()); w.once('error', reject); });
    await w.terminate();
    expect(p.signals.irq(0) & MIP.SEIP).toBe(MIP.SEIP);
    expect(p.bus.load(plicClaim(1), 4, 0)).toBe(8n);
  });
});

describe('CLINT (sifive,clint0)', () => {
  it('msip drives MSIP; mtimecmp is 64-bit with 32-bit halves; mtime counts', () => {
    const { p } = platform(2);
    const C = MMIO.clint.base;
    p.bus.store(C + 4, 4, 1n, 0);
    expect(p.signals.irq(1) & MIP.MSIP).toBe(MIP.MSIP);
    expect(p.bus.load(C + 4, 4, 0)).toBe(1n);
    p.bus.store(C + 4, 4, 0n, 0);
    expect(p.signals.irq(1) & MIP.MSIP).toBe(0);
    p.bus.store(C + 0x4008, 8, 0x1234_5678_9abc_def0n, 0);
    expect(p.signals.timecmp(1)).toBe(0x1234_5678_9abc_def0n);
    p.bus.store(C + 0x4008, 4, 0x1111_1111n, 0);
    expect(p.signals.timecmp(1)).toBe(0x1234_5678_1111_1111n);
    p.bus.store(C + 0x400c, 4, 0x2222_2222n, 0);
    expect(p.bus.load(C + 0x4008, 8, 0)).toBe(0x2222_2222_1111_1111n);
    expect(p.bus.load(C + 0x400c, 4, 0)).toBe(0x2222_2222n);
    p.signals.raise(0, MIP.MTIP);
    p.bus.store(C + 0x4000, 8, -1n, 0);
    expect(p.signals.irq(0) & MIP.MTIP).toBe(0); // a new compare value drops the pending timer
    const t1 = p.bus.load(C + 0xbff8, 8, 0)!;
    const lo = p.bus.load(C + 0xbff8, 4, 0)!;
    expect(lo).toBeLessThanOrEqual(0xffff_ffffn);
    let t2 = t1;
    while (t2 === t1) t2 = p.bus.load(C + 0xbff8, 8, 0)!;
    expect(t2).toBeGreaterThan(t1);
    expect(p.bus.load(C + 0xbff8, 2, 0)).toBeNull();
  });
});

describe('ns16550a UART', () => {
  const U = MMIO.uart0.base;
  const enableUartIrq = (p: Platform): void => {
    p.bus.store(PLIC + 4 * IRQ.uart0, 4, 1n, 0);
    p.bus.store(plicEnable(1), 4, 1n << BigInt(IRQ.uart0), 0);
  };

  it('THR bytes reach the console ring in order; LSR shows THRE|TEMT', () => {
    const { p } = platform(1);
    for (const c of 'hi\n') p.bus.store(U, 1, BigInt(c.charCodeAt(0)), 0);
    expect(Buffer.from(p.console.tx.pop()).toString()).toBe('hi\n');
    expect(p.bus.load(U + 5, 1, 0)! & 0x60n).toBe(0x60n);
  });

  it('DLAB switches offsets 0/1 to the divisor latch', () => {
    const { p } = platform(1);
    p.bus.store(U + 3, 1, 0x83n, 0);
    p.bus.store(U, 1, 0x01n, 0);
    p.bus.store(U + 1, 1, 0x02n, 0);
    expect(p.bus.load(U, 1, 0)).toBe(1n);
    expect(p.bus.load(U + 1, 1, 0)).toBe(2n);
    p.bus.store(U + 3, 1, 0x03n, 0);
    expect(p.bus.load(U + 1, 1, 0)).toBe(0n); // IER
    expect(p.console.tx.length).toBe(0); // a DLL write is not output
    p.bus.store(U + 7, 1, 0x5an, 0);
    expect(p.bus.load(U + 7, 1, 0)).toBe(0x5an);
  });

  it('THRE interrupt: raised on enabling ETBEI, cleared by reading IIR, raised again after a THR write', () => {
    const { p } = platform(1);
    enableUartIrq(p);
    p.bus.store(U + 2, 1, 0x01n, 0); // FIFO on
    expect(p.bus.load(U + 2, 1, 0)).toBe(0xc1n);
    p.bus.store(U + 1, 1, 0x02n, 0);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(MIP.SEIP);
    expect(p.bus.load(U + 2, 1, 0)).toBe(0xc2n);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(0);
    expect(p.bus.load(U + 2, 1, 0)).toBe(0xc1n);
    p.bus.store(U, 1, 0x41n, 0);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(MIP.SEIP);
    p.bus.store(U + 1, 1, 0x00n, 0);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(0);
  });

  it('RX: host bytes raise the data-ready interrupt until read out', () => {
    const { p } = platform(1);
    enableUartIrq(p);
    p.bus.store(U + 1, 1, 0x01n, 0);
    expect(p.bus.load(U + 5, 1, 0)! & 1n).toBe(0n);
    p.console.rx.push(Buffer.from('ok'));
    p.uart.rxNotify();
    expect(p.signals.irq(0) & MIP.SEIP).toBe(MIP.SEIP);
    expect(p.bus.load(U + 2, 1, 0)! & 0x0fn).toBe(0x04n);
    expect(p.bus.load(U + 5, 1, 0)! & 1n).toBe(1n);
    expect(p.bus.load(U, 1, 0)).toBe(0x6fn);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(MIP.SEIP);
    expect(p.bus.load(U, 1, 0)).toBe(0x6bn);
    expect(p.signals.irq(0) & MIP.SEIP).toBe(0);
    expect(p.bus.load(U + 5, 1, 0)! & 1n).toBe(0n);
  });

  it('a hart blocked on a full console ring does not block the main thread’s RX path', async () => {
    const { p, state } = platform(1);
    const total = p.console.tx.capacity + 1000;
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.url).then(({ createPlatform }) => {
        const q = createPlatform(workerData.state, 0);
        for (let i = 0; i < workerData.total; i++) q.bus.store(0x10000000, 1, BigInt(i & 0x7f), 0);
        parentPort.postMessage('done');
      });`;
    const w = new Worker(src, { eval: true, workerData: { state, total, url: new URL('./index.ts', import.meta.url).href } });
    const done = new Promise<void>((resolve, reject) => { w.once('message', () => resolve()); w.once('error', reject); });
    // Wait until the writer has filled the ring and is blocked on it.
    while (p.console.tx.free > 0) await new Promise((r) => setTimeout(r, 5));
    p.console.rx.push(Buffer.from('x'));
    p.uart.rxNotify(); // must not wait for the blocked writer
    let got = 0;
    const drain = async (): Promise<void> => { while (got < total) { got += p.console.tx.pop().length; await new Promise((r) => setImmediate(r)); } };
    await Promise.all([drain(), done]);
    await w.terminate();
    expect(got).toBe(total);
  });

  it('loopback mode reflects MCR outputs in MSR', () => {
    const { p } = platform(1);
    expect(p.bus.load(U + 6, 1, 0)).toBe(0xb0n);
    p.bus.store(U + 4, 1, 0x10n | 0x08n | 0x01n, 0);
    expect(p.bus.load(U + 6, 1, 0)).toBe(0x80n | 0x20n);
  });
});

describe('goldfish RTC', () => {
  it('reads host wall-clock ns; a guest write sets the clock', () => {
    const { p } = platform(1);
    const R = MMIO.rtc.base;
    const before = BigInt(Date.now()) * 1_000_000n;
    const lo = p.bus.load(R, 4, 0)!;
    const hi = p.bus.load(R + 4, 4, 0)!;
    const after = BigInt(Date.now() + 1) * 1_000_000n;
    const t = (hi << 32n) | lo;
    expect(t).toBeGreaterThanOrEqual(before - 1_000_000n);
    expect(t).toBeLessThanOrEqual(after);
    // set to 2000-01-01T00:00:00Z
    const want = 946_684_800n * 1_000_000_000n;
    p.bus.store(R + 4, 4, want >> 32n, 0);
    p.bus.store(R, 4, want & 0xffff_ffffn, 0);
    const lo2 = p.bus.load(R, 4, 0)!;
    const t2 = (p.bus.load(R + 4, 4, 0)! << 32n) | lo2;
    expect(t2).toBeGreaterThanOrEqual(want);
    expect(t2 - want).toBeLessThan(60n * 1_000_000_000n);
  });
});

describe('sifive_test finisher', () => {
  it.each([
    [0x5555n, { reason: 'poweroff', code: 0 }],
    [0x7777n, { reason: 'reset', code: 0 }],
    [0x3333n | (42n << 16n), { reason: 'fail', code: 42 }],
    [0x3333n | (0xffffn << 16n), { reason: 'fail', code: 0xffff }],
  ])('write %s → %o, run state STOPPING', async (value, want) => {
    const { p } = platform(2);
    expect(p.exit.get()).toBeNull();
    p.bus.store(MMIO.test.base, 4, value, 1);
    expect(await p.exit.wait()).toEqual(want);
    expect(p.signals.runState()).toBe(RUN.STOPPING);
  });

  it('ignores other values and the first exit wins', () => {
    const { p } = platform(1);
    p.bus.store(MMIO.test.base, 4, 0x1234n, 0);
    expect(p.exit.get()).toBeNull();
    expect(p.signals.runState()).toBe(RUN.RUNNING);
    p.bus.store(MMIO.test.base, 4, 0x3333n | (3n << 16n), 0);
    p.bus.store(MMIO.test.base, 4, 0x5555n, 0);
    expect(p.exit.get()).toEqual({ reason: 'fail', code: 3 });
    expect(p.signals.hsmState(0)).toBe(HSM.STARTED);
  });
});

describe('virtio-mmio slots', () => {
  it('each of the 8 slots reads as an empty virtio-mmio v2 slot', () => {
    const { p } = platform(1);
    for (let i = 0; i < 8; i++) {
      const b = MMIO.virtio.base + i * 0x1000;
      expect(p.bus.load(b, 4, 0)).toBe(0x7472_6976n);
      expect(p.bus.load(b + 4, 4, 0)).toBe(2n);
      expect(p.bus.load(b + 8, 4, 0)).toBe(0n);
      expect(p.bus.store(b + 0x70, 4, 1n, 0)).toBe(true);
      expect(p.bus.load(b + 0x70, 4, 0)).toBe(0n);
      expect(p.bus.load(b + 2, 2, 0)).toBeNull();
    }
    expect(p.bus.load(MMIO.virtio.base + 8 * 0x1000, 4, 0)).toBeNull();
  });

  it('a hook attached to a slot takes over its window', () => {
    const { p } = platform(1);
    const seen: string[] = [];
    p.virtio[3]!.attach({
      read: (o, s) => BigInt(o + s),
      write: (o, s, v) => { seen.push(`${o}/${s}/${v}`); return true; },
    });
    expect(p.bus.load(MMIO.virtio.base + 3 * 0x1000 + 0x100, 1, 0)).toBe(0x101n);
    p.bus.store(MMIO.virtio.base + 3 * 0x1000 + 0x50, 4, 7n, 0);
    expect(seen).toEqual(['80/4/7']);
  });
});
