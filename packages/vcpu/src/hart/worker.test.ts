// Hart workers end to end: real worker_threads over one shared memory whose
// RAM window is an mmap of a memfd, the real platform (bus + SBI), exact
// totals for AMOs and LR/SC across two harts, and a builtin-SBI boot with
// HSM hart_start/hart_stop, SBI set_timer → STIP → trap, WFI and SRST.
import { describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { memfdCreate, mmapFixedOver, mmapShared, closeFd } from '@vmm/core';
import { A, li, REG } from './asm.ts';
import { createHartMemory, loadHartModule } from './wasm.ts';
import type { HartWorkerData, HartWorkerMessage } from './hart-worker.ts';
import type { HartBoot } from './hart.ts';
import { RAM_BASE, WASM_RAM_OFFSET } from '../layout.ts';
import { createPlatformState } from '../platform/index.ts';
import { HartSignals, RUN } from '../signals.ts';

const BASE = BigInt(RAM_BASE);
const ramSize = 4 << 20;
const WORKER_URL = new URL('./hart-worker.ts', import.meta.url);
const { a0, a1, a2, a6, a7, s0, s1, t0, t1, t2, t3, t4, t5 } = REG;
const s2 = 18;

/** A program with labels: each label is the word index at which it was placed. */
class Prog {
  readonly words: number[] = [];
  readonly labels = new Map<string, number>();
  private readonly fixups: { at: number; label: string; make: (off: number) => number }[] = [];
  emit(...w: number[]): this { this.words.push(...w); return this; }
  label(name: string): this { this.labels.set(name, this.words.length); return this; }
  ref(label: string, make: (off: number) => number): this {
    this.fixups.push({ at: this.words.length, label, make });
    this.words.push(0);
    return this;
  }
  /** Load a label's address: auipc + addi. */
  la(rd: number, label: string): this {
    const at = this.words.length;
    this.fixups.push({ at, label, make: (off) => A.auipc(rd, (off + 0x800) >> 12) });
    this.fixups.push({ at: at + 1, label, make: (off) => A.addi(rd, rd, ((off + 4) << 20) >> 20) });
    this.words.push(0, 0);
    return this;
  }
  bytes(): Uint8Array {
    for (const f of this.fixups) this.words[f.at] = f.make((this.labels.get(f.label)! - f.at) * 4);
    const b = new Uint8Array(this.words.length * 4);
    const dv = new DataView(b.buffer);
    this.words.forEach((w, i) => dv.setUint32(i * 4, w, true));
    return b;
  }
  addr(label: string): bigint { return BASE + BigInt(this.labels.get(label)! * 4); }
}

function startHarts(harts: number, program: Uint8Array, boot: (h: number) => HartBoot) {
  const memory = createHartMemory(ramSize);
  const fd = memfdCreate('hart-test-ram', ramSize);
  mmapFixedOver(memory.buffer, WASM_RAM_OFFSET, fd, ramSize);
  const ramView = new Uint8Array(mmapShared(fd, ramSize)); // the same pages, seen through a second mapping
  ramView.set(program);
  const platform = createPlatformState({ harts, memBytes: ramSize });
  const exits = Array.from({ length: harts }, (_, h) => new Promise<HartWorkerMessage>((resolve, reject) => {
    const data: HartWorkerData = { hartId: h, harts, memory, ramSize, signals: platform.signals, platform, boot: boot(h), module: loadHartModule() };
    const w = new Worker(WORKER_URL, { workerData: data });
    w.once('message', (m: HartWorkerMessage) => { resolve(m); void w.terminate(); });
    w.once('error', reject);
  }));
  return { exits: Promise.all(exits), ram: new DataView(ramView.buffer), signals: new HartSignals(harts, platform.signals), close: () => closeFd(fd) };
}

describe('hart workers', () => {
  it('AMOs and LR/SC from two harts give exact totals', async () => {
    const N = 100_000;
    const CNT = 0x10000n;
    const p = new Prog()
      .emit(A.csrrs(s2, 0xf14, 0), ...li(s0, BASE + CNT), ...li(s1, BigInt(N)), A.addi(t1, 0, 1))
      .label('loop')
      .emit(A.amoadd_d(0, s0, t1), A.addi(t2, s0, 8))
      .label('retry')
      .emit(A.lr_d(t3, t2), A.addi(t3, t3, 1), A.sc_d(t4, t2, t3))
      .ref('retry', (o) => A.bne(t4, 0, o))
      .emit(A.addi(t5, s0, 24), A.amoadd_w(0, t5, t1), A.addi(s1, s1, -1))
      .ref('loop', (o) => A.bne(s1, 0, o))
      .emit(A.addi(t2, s0, 16), A.amoadd_d(0, t2, t1))
      .ref('park', (o) => A.bne(s2, 0, o))
      .label('wait')
      .emit(A.ld(t4, s0, 16), A.addi(t5, 0, 2))
      .ref('wait', (o) => A.bne(t4, t5, o))
      .emit(...li(a0, 0x100000n), ...li(a1, 0x5555n), A.sw(a1, a0, 0))
      .label('park')
      .emit(A.wfi())
      .ref('park', (o) => A.jal(0, o));
    const m = startHarts(2, p.bytes(), (h) => ({ mode: 'firmware', pc: BASE, a0: BigInt(h), a1: 0n, a2: 0n }));
    try {
      const exits = await m.exits;
      for (const e of exits) expect(e).toMatchObject({ type: 'exit', exit: { kind: 'stopping' } });
      expect(m.ram.getBigUint64(Number(CNT), true)).toBe(BigInt(2 * N));
      expect(m.ram.getBigUint64(Number(CNT) + 8, true)).toBe(BigInt(2 * N));
      expect(m.ram.getBigUint64(Number(CNT) + 16, true)).toBe(2n);
      expect(m.ram.getUint32(Number(CNT) + 24, true)).toBe(2 * N);
    } finally { m.close(); }
  });

  it('builtin SBI: hart_start/hart_stop, set_timer → supervisor timer interrupt out of WFI, SRST shutdown', async () => {
    const FLAG = 0x10000n;
    const sbi = (eid: number, fid: number) => [...li(a7, BigInt(eid)), A.addi(a6, 0, fid), A.ecall()];
    const p = new Prog();
    p.emit(...li(s0, BASE + FLAG));
    // hart_start(1, secondary, 0x77) (SBI 2.0 §9.1)
    p.emit(A.addi(a0, 0, 1)).la(a1, 'secondary').emit(A.addi(a2, 0, 0x77), ...sbi(0x48534d, 0), A.sd(a0, s0, 24));
    // stvec = handler; sie = STIE; sstatus.SIE = 1
    p.la(t0, 'handler').emit(A.csrrw(0, 0x105, t0), A.addi(t0, 0, 1 << 5), A.csrrw(0, 0x104, t0), A.addi(t0, 0, 2), A.csrrs(0, 0x100, t0));
    // set_timer(time + 2 ms) (§6.1), then sleep
    p.emit(A.csrrs(a0, 0xc01, 0), ...li(t1, 20_000n), A.add(a0, a0, t1), ...sbi(0x54494d45, 0));
    p.label('idle').emit(A.wfi()).ref('idle', (o) => A.jal(0, o));
    // Timer interrupt: record scause, wait for hart 1's flag, then system_reset(shutdown).
    p.label('handler').emit(A.csrrs(t0, 0x142, 0), A.sd(t0, s0, 16));
    p.label('waitsec').emit(A.ld(t1, s0, 0)).ref('waitsec', (o) => A.beq(t1, 0, o));
    p.emit(A.addi(a0, 0, 0), A.addi(a1, 0, 0), ...sbi(0x53525354, 0));
    // Hart 1 starts here in S-mode with a0 = hartid, a1 = opaque; it stops itself.
    p.label('secondary').emit(...li(s0, BASE + FLAG), A.addi(a1, a1, 1), A.sd(a1, s0, 0), A.sd(a0, s0, 8), ...sbi(0x48534d, 1));
    const m = startHarts(2, p.bytes(), (h) => ({ mode: 'builtin', pc: BASE, a0: BigInt(h), a1: 0n, a2: 0n }));
    try {
      const exits = await m.exits;
      expect(exits[0]).toMatchObject({ type: 'exit', exit: { kind: 'shutdown' } });
      expect(exits[1]).toMatchObject({ type: 'exit', exit: { kind: 'stopping' } });
      expect(m.ram.getBigUint64(Number(FLAG) + 24, true)).toBe(0n); // hart_start succeeded
      expect(m.ram.getBigUint64(Number(FLAG), true)).toBe(0x78n); // opaque + 1, written by hart 1
      expect(m.ram.getBigUint64(Number(FLAG) + 8, true)).toBe(1n); // hart 1's a0 = hartid
      expect(m.ram.getBigUint64(Number(FLAG) + 16, true)).toBe((1n << 63n) | 5n); // scause = supervisor timer
    } finally { m.close(); }
  });

  it('pauses and resumes on the machine run state, then stops', async () => {
    const CNT = 0x10000n;
    const p = new Prog().emit(...li(s0, BASE + CNT)).label('spin').emit(A.ld(t0, s0, 0), A.addi(t0, t0, 1), A.sd(t0, s0, 0)).ref('spin', (o) => A.jal(0, o));
    const m = startHarts(1, p.bytes(), () => ({ mode: 'firmware', pc: BASE, a0: 0n, a1: 0n, a2: 0n }));
    const count = () => m.ram.getBigUint64(Number(CNT), true);
    const waitForProgress = async () => { const c = count(); while (count() === c) await new Promise((r) => setTimeout(r, 5)); };
    try {
      await waitForProgress();
      m.signals.setRunState(RUN.PAUSED);
      // The hart finishes its current batch, then parks: once it says so, the counter stays.
      while (!m.signals.parked(0)) await new Promise((r) => setTimeout(r, 5));
      const settled = count();
      await new Promise((r) => setTimeout(r, 50));
      expect(count()).toBe(settled);
      expect(m.signals.parked(0)).toBe(true);
      m.signals.setRunState(RUN.RUNNING);
      await waitForProgress();
      expect(count()).toBeGreaterThan(settled);
      expect(m.signals.parked(0)).toBe(false);
      m.signals.setRunState(RUN.STOPPING);
      const [e] = await m.exits;
      expect(e).toMatchObject({ type: 'exit', exit: { kind: 'stopping' } });
    } finally { m.close(); }
  });

  it('firmware boot: M-mode programs the CLINT through the bus, MTIP wakes WFI, the finisher stops the machine', async () => {
    const FLAG = 0x10000n;
    const p = new Prog()
      .emit(...li(s0, BASE + FLAG)).la(t0, 'handler').emit(A.csrrw(0, 0x305, t0))
      .emit(...li(t0, 0x200bff8n), A.ld(t1, t0, 0), ...li(t2, 20_000n), A.add(t1, t1, t2)) // mtime + 2 ms
      .emit(...li(t0, 0x2004000n), A.sd(t1, t0, 0)) // mtimecmp[0]
      .emit(A.addi(t0, 0, 0x80), A.csrrw(0, 0x304, t0), A.csrrwi(0, 0x300, 8)) // mie.MTIE, mstatus.MIE
      .label('idle').emit(A.wfi()).ref('idle', (o) => A.jal(0, o))
      .label('handler').emit(A.csrrs(t0, 0x342, 0), A.sd(t0, s0, 0), ...li(a0, 0x100000n), ...li(a1, 0x5555n), A.sw(a1, a0, 0))
      .label('end').ref('end', (o) => A.jal(0, o));
    const m = startHarts(1, p.bytes(), () => ({ mode: 'firmware', pc: BASE, a0: 0n, a1: 0n, a2: 0n }));
    try {
      const [e] = await m.exits;
      expect(e).toMatchObject({ type: 'exit', exit: { kind: 'stopping' } });
      expect(m.ram.getBigUint64(Number(FLAG), true)).toBe((1n << 63n) | 7n); // mcause = machine timer
    } finally { m.close(); }
  });
});
