import { describe, expect, it } from 'vitest';
import type { HartRegs } from '../bus.ts';
import { RAM_BASE } from '../layout.ts';
import { HSM, MIP, REQ, RUN } from '../signals.ts';
import { createPlatform, createPlatformState, type Platform } from './index.ts';
import { SBI_ERR, SBI_EXT, SBI_IMPL_ID } from './sbi.ts';

const RAM = 1 << 20;

/** Integer registers plus a small guest RAM at RAM_BASE, as the hart core exposes them at an ECALL. */
class TestRegs implements HartRegs {
  readonly hartId: number;
  readonly regs = new BigUint64Array(32);
  readonly ram: Uint8Array;
  constructor(hartId: number, ram: Uint8Array) {
    this.hartId = hartId;
    this.ram = ram;
  }
  x(i: number): bigint { return i === 0 ? 0n : this.regs[i]!; }
  setX(i: number, v: bigint): void { if (i !== 0) this.regs[i] = BigInt.asUintN(64, v); }
  readPhys(paddr: bigint, len: number): Uint8Array | null {
    const off = paddr - BigInt(RAM_BASE);
    if (off < 0n || off + BigInt(len) > BigInt(this.ram.length)) return null;
    return this.ram.slice(Number(off), Number(off) + len);
  }
  writePhys(paddr: bigint, data: Uint8Array): boolean {
    const off = paddr - BigInt(RAM_BASE);
    if (off < 0n || off + BigInt(data.length) > BigInt(this.ram.length)) return false;
    this.ram.set(data, Number(off));
    return true;
  }
}

function setup(harts = 4): { p: Platform; ram: Uint8Array; call: (hart: number, eid: number, fid: number, ...args: bigint[]) => { a0: bigint; a1: bigint; outcome: string; regs: TestRegs } } {
  const state = createPlatformState({ harts, memBytes: RAM });
  const p = createPlatform(state, 0);
  const ram = new Uint8Array(RAM);
  const call = (hart: number, eid: number, fid: number, ...args: bigint[]) => {
    const regs = new TestRegs(hart, ram);
    regs.setX(11, 0xdeadn); // a1 sentinel: functions without a value leave it alone
    args.forEach((a, i) => regs.setX(10 + i, a));
    regs.setX(16, BigInt(fid));
    regs.setX(17, BigInt(eid));
    const outcome = p.sbi.call(regs);
    return { a0: BigInt.asIntN(64, regs.x(10)), a1: regs.x(11), outcome, regs };
  };
  return { p, ram, call };
}

const ALL = 0xffff_ffff_ffff_ffffn;

describe('SBI base extension (SBI 2.0 §4)', () => {
  it('reports spec 2.0, our impl id, and probes extensions', () => {
    const { call } = setup();
    expect(call(0, SBI_EXT.BASE, 0)).toMatchObject({ a0: 0n, a1: 0x0200_0000n });
    expect(call(0, SBI_EXT.BASE, 1)).toMatchObject({ a0: 0n, a1: BigInt(SBI_IMPL_ID) });
    for (const eid of [SBI_EXT.TIME, SBI_EXT.IPI, SBI_EXT.RFENCE, SBI_EXT.HSM, SBI_EXT.SRST, SBI_EXT.DBCN, 0x01]) {
      expect(call(0, SBI_EXT.BASE, 3, BigInt(eid)).a1).toBe(1n);
    }
    expect(call(0, SBI_EXT.BASE, 3, 0x5355_5350n).a1).toBe(0n); // SUSP not offered
    expect(call(0, SBI_EXT.BASE, 3, 0x1_0000_0010n).a1).toBe(0n);
    for (const fid of [4, 5, 6]) expect(call(0, SBI_EXT.BASE, fid)).toMatchObject({ a0: 0n, a1: 0n });
    expect(call(0, SBI_EXT.BASE, 7).a0).toBe(BigInt(SBI_ERR.NOT_SUPPORTED));
  });

  it('unknown extensions fail with NOT_SUPPORTED', () => {
    const { call } = setup();
    expect(call(0, 0x1234_5678, 0)).toMatchObject({ a0: -2n, a1: 0xdeadn, outcome: 'continue' });
  });
});

describe('TIME (§6)', () => {
  it('set_timer programs timecmp and clears a pending STIP', () => {
    const { p, call } = setup();
    p.signals.raise(2, MIP.STIP);
    expect(call(2, SBI_EXT.TIME, 0, 123_456n).a0).toBe(0n);
    expect(p.signals.timecmp(2)).toBe(123_456n);
    expect(p.signals.irq(2) & MIP.STIP).toBe(0);
    expect(call(1, 0x00, 0, 99n).a0).toBe(0n); // legacy set_timer
    expect(p.signals.timecmp(1)).toBe(99n);
  });
});

describe('IPI (§7)', () => {
  it('sets SSIP on the harts of the mask; base -1 means all', () => {
    const { p, call } = setup(4);
    expect(call(0, SBI_EXT.IPI, 0, 0b101n, 1n).a0).toBe(0n); // harts 1 and 3
    expect([0, 1, 2, 3].map((h) => p.signals.irq(h) & MIP.SSIP)).toEqual([0, MIP.SSIP, 0, MIP.SSIP]);
    expect(call(0, SBI_EXT.IPI, 0, 0n, ALL).a0).toBe(0n);
    expect([0, 1, 2, 3].map((h) => p.signals.irq(h) & MIP.SSIP)).toEqual([MIP.SSIP, MIP.SSIP, MIP.SSIP, MIP.SSIP]);
    expect(call(0, SBI_EXT.IPI, 0, 0b1n, 4n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
    expect(call(0, SBI_EXT.IPI, 0, 1n << 63n, 0n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
  });
});

describe('RFENCE (§8)', () => {
  it('requests a TLB flush on every target and does not wait for stopped harts', () => {
    const { p, call } = setup(4);
    // harts 1..3 are STOPPED at power-on: the call must return without them flushing
    expect(call(0, SBI_EXT.RFENCE, 1, 0b1110n, 0n, 0n, ALL).a0).toBe(0n);
    expect([1, 2, 3].map((h) => p.signals.irq(h) & REQ.TLB_FLUSH)).toEqual([REQ.TLB_FLUSH, REQ.TLB_FLUSH, REQ.TLB_FLUSH]);
    expect(p.signals.irq(0) & REQ.TLB_FLUSH).toBe(0);
    expect(call(0, SBI_EXT.RFENCE, 0, 1n, 0n).a0).toBe(0n); // remote_fence_i on self
    expect(p.signals.irq(0) & REQ.TLB_FLUSH).toBe(REQ.TLB_FLUSH);
    expect(call(0, SBI_EXT.RFENCE, 3, 1n, 0n).a0).toBe(BigInt(SBI_ERR.NOT_SUPPORTED)); // hfence needs H
    expect(call(0, SBI_EXT.RFENCE, 2, 1n, 7n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
  });

  it('waits for a running target until it has taken the request', async () => {
    const { p, call } = setup(2);
    p.signals.setHsmState(1, HSM.STARTED);
    // Another thread plays hart 1: it waits for the request and clears it.
    const { Worker } = await import('node:worker_threads');
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      const i32 = new Int32Array(workerData.buf);
      const idx = workerData.index;
      parentPort.postMessage('ready');
      while ((Atomics.load(i32, idx) & workerData.bit) === 0) Atomics.wait(i32, idx, Atomics.load(i32, idx), 1000);
      Atomics.and(i32, idx, ~workerData.bit);
      parentPort.postMessage('flushed');`;
    const cell = p.signals.irqCell(1);
    const w = new Worker(src, { eval: true, workerData: { buf: p.signals.buffer, index: cell.index, bit: REQ.TLB_FLUSH } });
    await new Promise((r) => w.once('message', r));
    const r = call(0, SBI_EXT.RFENCE, 1, 0b10n, 0n, 0n, ALL);
    expect(r.a0).toBe(0n);
    // The call returned only after the target cleared its request.
    expect(p.signals.irq(1) & REQ.TLB_FLUSH).toBe(0);
    await w.terminate();
  });
});

describe('HSM (§9)', () => {
  it('hart_start moves a stopped hart to START_PENDING with its entry point and opaque', () => {
    const { p, call } = setup(3);
    expect(call(0, SBI_EXT.HSM, 2, 1n)).toMatchObject({ a0: 0n, a1: BigInt(HSM.STOPPED) });
    expect(call(0, SBI_EXT.HSM, 0, 1n, BigInt(RAM_BASE + 0x1000), 0xabcn).a0).toBe(0n);
    expect(p.signals.hsmState(1)).toBe(HSM.START_PENDING);
    expect(p.signals.start(1)).toEqual({ addr: BigInt(RAM_BASE + 0x1000), opaque: 0xabcn });
    expect(call(0, SBI_EXT.HSM, 0, 1n, BigInt(RAM_BASE), 0n).a0).toBe(BigInt(SBI_ERR.ALREADY_STARTED));
    expect(call(0, SBI_EXT.HSM, 0, 0n, BigInt(RAM_BASE), 0n).a0).toBe(BigInt(SBI_ERR.ALREADY_AVAILABLE));
    expect(call(0, SBI_EXT.HSM, 0, 3n, BigInt(RAM_BASE), 0n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
    expect(call(0, SBI_EXT.HSM, 0, 2n, 0x1000n, 0n).a0).toBe(BigInt(SBI_ERR.INVALID_ADDRESS));
    expect(p.signals.hsmState(2)).toBe(HSM.STOPPED);
    expect(call(0, SBI_EXT.HSM, 2, 9n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
  });

  it('hart_stop parks the caller; hart_suspend retentive returns; others unsupported', () => {
    const { p, call } = setup(2);
    p.signals.setHsmState(1, HSM.STARTED);
    expect(call(1, SBI_EXT.HSM, 1)).toMatchObject({ a0: 0n, outcome: 'stop' });
    expect(p.signals.hsmState(1)).toBe(HSM.STOPPED);
    expect(call(0, SBI_EXT.HSM, 3, 0n, 0n, 0n)).toMatchObject({ a0: 0n, outcome: 'continue' });
    expect(call(0, SBI_EXT.HSM, 3, 0x8000_0000n, BigInt(RAM_BASE), 0n).a0).toBe(BigInt(SBI_ERR.NOT_SUPPORTED));
    expect(call(0, SBI_EXT.HSM, 3, 5n, 0n, 0n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
  });
});

describe('SRST (§10) and legacy shutdown', () => {
  it.each([
    [0n, 0n, { reason: 'poweroff', code: 0 }],
    [0n, 1n, { reason: 'fail', code: 1 }],
    [1n, 0n, { reason: 'reset', code: 0 }],
    [2n, 0n, { reason: 'reset', code: 0 }],
  ])('system_reset(%s, %s) → %o', (type, reason, want) => {
    const { p, call } = setup(1);
    expect(call(0, SBI_EXT.SRST, 0, type, reason).outcome).toBe('shutdown');
    expect(p.exit.get()).toEqual(want);
    expect(p.signals.runState()).toBe(RUN.STOPPING);
  });

  it('rejects reserved types and reasons', () => {
    const { p, call } = setup(1);
    expect(call(0, SBI_EXT.SRST, 0, 3n, 0n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
    expect(call(0, SBI_EXT.SRST, 0, 0n, 2n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
    expect(p.exit.get()).toBeNull();
  });

  it('legacy shutdown powers off', () => {
    const { p, call } = setup(1);
    expect(call(0, 0x08, 0).outcome).toBe('shutdown');
    expect(p.exit.get()).toEqual({ reason: 'poweroff', code: 0 });
  });
});

describe('DBCN (§12) and legacy console', () => {
  it('console_write takes a guest-physical buffer; write_byte and putchar append in order', () => {
    const { p, ram, call } = setup(1);
    ram.set(Buffer.from('hello, '), 0x100);
    expect(call(0, SBI_EXT.DBCN, 0, 7n, BigInt(RAM_BASE + 0x100), 0n)).toMatchObject({ a0: 0n, a1: 7n });
    expect(call(0, SBI_EXT.DBCN, 2, 0x77n).a0).toBe(0n);
    expect(call(0, 0x01, 0, 0x21n).a0).toBe(0n);
    expect(Buffer.from(p.console.tx.pop()).toString()).toBe('hello, w!');
    expect(call(0, SBI_EXT.DBCN, 0, 4n, 0x10n, 0n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM));
    expect(call(0, SBI_EXT.DBCN, 0, 4n, BigInt(RAM_BASE), 1n).a0).toBe(BigInt(SBI_ERR.INVALID_PARAM)); // hi half
  });

  it('console_read fills the guest buffer with what is waiting; getchar returns -1 when empty', () => {
    const { p, ram, call } = setup(1);
    expect(call(0, SBI_EXT.DBCN, 1, 16n, BigInt(RAM_BASE), 0n)).toMatchObject({ a0: 0n, a1: 0n });
    p.console.rx.push(Buffer.from('abc'));
    expect(call(0, SBI_EXT.DBCN, 1, 2n, BigInt(RAM_BASE + 8), 0n)).toMatchObject({ a0: 0n, a1: 2n });
    expect(Buffer.from(ram.subarray(8, 10)).toString()).toBe('ab');
    expect(call(0, 0x02, 0).a0).toBe(0x63n);
    expect(call(0, 0x02, 0).a0).toBe(-1n);
  });

  it('legacy clear_ipi lowers SSIP; legacy send_ipi is not offered', () => {
    const { p, call } = setup(1);
    p.signals.raise(0, MIP.SSIP);
    expect(call(0, 0x03, 0).a0).toBe(0n);
    expect(p.signals.irq(0) & MIP.SSIP).toBe(0);
    expect(call(0, 0x04, 0, 0n).a0).toBe(-2n);
  });
});
