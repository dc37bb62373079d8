// One hart's control loop around an ExecutionEngine: interrupt-line polling
// between batches, the timer, SBI calls (builtin boot), WFI sleep, HSM
// park/start and the machine's run state. A vCPU is a state machine with
// typed exits (Firecracker's vcpu): running → paused → running … → stopped.

import { HartSignals, HSM, MIP, REQ, RUN } from '../signals.ts';
import { RAM_BASE, WASM_RAM_OFFSET, TIMEBASE_HZ } from '../layout.ts';
import type { HartRegs, SbiHandler } from '../bus.ts';
import { PRIV, type ExecutionEngine } from '../engine.ts';

export interface HartBoot {
  /** builtin: S-mode entry, SBI served by the host; firmware: M-mode entry (OpenSBI). */
  mode: 'builtin' | 'firmware';
  pc: bigint;
  a0: bigint;
  a1: bigint;
  a2: bigint;
}

export type HartState = 'running' | 'paused' | 'stopped';

/** Why Hart.run() returned. */
export type HartExit =
  /** The machine's run state became STOPPING (poweroff, reset, or the host stopping the VM). */
  | { kind: 'stopping' }
  /** SBI SRST (or the legacy shutdown call) on this hart. */
  | { kind: 'shutdown' }
  /** A trap that nobody can handle: in builtin boot, one that would enter the absent M-mode firmware. */
  | { kind: 'fatal'; cause: bigint; tval: bigint; pc: bigint; priv: number };

export class HartStateError extends Error {
  readonly code = 'VCPU_HART_STATE';
  constructor(message: string) { super(message); this.name = 'HartStateError'; }
}

const TRANSITIONS: Record<HartState, readonly HartState[]> = {
  running: ['paused', 'stopped'],
  paused: ['running', 'stopped'],
  stopped: [],
};

export interface HartOptions {
  engine: ExecutionEngine;
  signals: HartSignals;
  /** Required for builtin boot. */
  sbi?: SbiHandler;
  boot: HartBoot;
  /** The shared memory holding guest RAM at WASM_RAM_OFFSET (for SBI buffer access). */
  memory: WebAssembly.Memory;
  ramSize: number;
  /** Instructions per batch between polls of the interrupt lines. */
  batch?: number;
}

// medeleg as firmware leaves it for an S-mode OS: misaligned accesses, access
// faults, illegal instruction, breakpoint, ECALL from U, page faults.
const BUILTIN_MEDELEG = 0xb1ffn;
const BUILTIN_MIDELEG = BigInt(MIP.SSIP | MIP.STIP | MIP.SEIP);
const LINE_BITS = MIP.MSIP | MIP.MTIP | MIP.MEIP | MIP.SEIP | MIP.STIP;
const MSTATUS_FS_INITIAL = 1n << 13n;
const SCOUNTEREN_FIRMWARE = 0x7n;
// Longest WFI/park sleep without a notify: bounds the cost of a wake-up lost between a check and the wait.
const MAX_SLEEP_MS = 50;

export class Hart {
  readonly hartId: number;
  private readonly engine: ExecutionEngine;
  private readonly signals: HartSignals;
  private readonly sbi: SbiHandler | undefined;
  private readonly boot: HartBoot;
  private readonly batch: number;
  private readonly irq: { array: Int32Array; index: number };
  private readonly header: Int32Array;
  private readonly ram: Uint8Array;
  private readonly regs: HartRegs;
  private lastIrq = 0;
  private st: HartState = 'running';

  constructor(opts: HartOptions) {
    this.engine = opts.engine;
    this.hartId = opts.engine.hartId;
    this.signals = opts.signals;
    this.sbi = opts.sbi;
    this.boot = opts.boot;
    this.batch = opts.batch ?? 16384;
    this.irq = opts.signals.irqCell(this.hartId);
    // signals.ts header: Int32 [0] = run state, [1] = run-state futex.
    this.header = new Int32Array(opts.signals.buffer, 0, 2);
    this.ram = new Uint8Array(opts.memory.buffer, WASM_RAM_OFFSET, opts.ramSize);
    if (opts.boot.mode === 'builtin' && !opts.sbi) throw new HartStateError(`hart ${this.hartId}: builtin boot needs an SBI handler`);
    const e = this.engine;
    const ram = this.ram;
    const inRam = (paddr: bigint, len: number): number | null => {
      const off = paddr - BigInt(RAM_BASE);
      return off >= 0n && off + BigInt(len) <= BigInt(ram.length) ? Number(off) : null;
    };
    this.regs = {
      hartId: this.hartId,
      x: (i) => e.x(i),
      setX: (i, v) => e.setX(i, v),
      readPhys: (paddr, len) => { const o = inRam(paddr, len); return o === null ? null : ram.slice(o, o + len); },
      writePhys: (paddr, data) => { const o = inRam(paddr, data.length); if (o === null) return false; ram.set(data, o); return true; },
    };
  }

  get state(): HartState { return this.st; }
  private to(s: HartState): void {
    if (!TRANSITIONS[this.st].includes(s)) throw new HartStateError(`hart ${this.hartId}: cannot go from ${this.st} to ${s}`);
    this.st = s;
  }

  /** Put the engine in the boot state (privileged 1.12 §3.4 reset, then what firmware would leave). */
  resetForBoot(): void {
    const e = this.engine;
    e.reset();
    if (this.boot.mode === 'firmware') {
      e.pc = this.boot.pc;
      e.setX(10, this.boot.a0); e.setX(11, this.boot.a1); e.setX(12, this.boot.a2);
      return;
    }
    e.writeCsr(0x302, BUILTIN_MEDELEG);
    e.writeCsr(0x303, BUILTIN_MIDELEG);
    // The counter enables as OpenSBI 1.6 leaves them (privileged 1.12 §3.1.11,
    // §4.1.4): mcounteren all ones (S may read every counter), scounteren =
    // CY|TM|IR so that U-mode may read cycle, time and instret — Linux's vDSO
    // clock_gettime reads `time` from U-mode, and the kernel only narrows
    // scounteren itself when an SBI PMU extension is present.
    e.writeCsr(0x306, 0xffffffffn);
    e.writeCsr(0x106, SCOUNTEREN_FIRMWARE);
    e.writeCsr(0x300, MSTATUS_FS_INITIAL);
    if (this.hartId === 0 || this.signals.hsmState(this.hartId) === HSM.STARTED) {
      this.enterS(this.boot.pc, BigInt(this.hartId), this.boot.a1);
    }
  }

  private enterS(pc: bigint, a0: bigint, a1: bigint): void {
    const e = this.engine;
    e.writeCsr(0x180, 0n); // satp = 0 (SBI 2.0 §9.1: the hart starts with the MMU off)
    e.writeCsr(0x100, e.readCsr(0x100)! & ~2n); // sstatus.SIE = 0
    e.writeCsr(0x104, 0n); // sie = 0
    e.setX(10, a0); e.setX(11, a1);
    e.pc = pc;
    e.priv = PRIV.S;
  }

  /** Sample the interrupt word and the timer into the engine. */
  private poll(): void {
    const { array, index } = this.irq;
    let v = Atomics.load(array, index);
    if (v & (REQ.TLB_FLUSH | REQ.FENCE_I | MIP.SSIP)) {
      // Requests and SSIP edges (SBI IPI) are consumed: the guest clears sip.SSIP itself.
      const take = v & (REQ.TLB_FLUSH | REQ.FENCE_I | MIP.SSIP);
      v = Atomics.and(array, index, ~take) & ~take;
      if (take & REQ.FENCE_I) this.engine.fenceI();
      if (take & REQ.TLB_FLUSH) this.engine.flushTlb();
      if (take & MIP.SSIP) this.engine.raiseSoftBits(MIP.SSIP);
    }
    this.lastIrq = v;
    let lines = v & LINE_BITS;
    if (this.signals.nowTicks() >= this.signals.timecmp(this.hartId)) lines |= this.boot.mode === 'builtin' ? MIP.STIP : MIP.MTIP;
    this.engine.setIrqLines(lines);
  }

  /** Sleep in WFI until an interrupt line changes or the timer deadline passes (§3.3.3). */
  private sleep(): void {
    this.poll();
    if (this.engine.wfiWake() || this.signals.runState() !== RUN.RUNNING) return;
    const now = this.signals.nowTicks();
    const tc = this.signals.timecmp(this.hartId);
    let ms = MAX_SLEEP_MS;
    if (tc > now) ms = Math.min(ms, Number(tc - now) / (TIMEBASE_HZ / 1000));
    else ms = MAX_SLEEP_MS; // deadline passed but masked in mie: only a line change can wake us
    if (ms > 0) Atomics.wait(this.irq.array, this.irq.index, this.lastIrq, ms);
  }

  /** HSM STOPPED: wait for hart_start (SBI 2.0 §9). Returns false if the machine is stopping. */
  private park(): boolean {
    for (;;) {
      if (this.signals.runState() === RUN.STOPPING) return false;
      if (this.signals.hsmState(this.hartId) === HSM.START_PENDING) {
        const { addr, opaque } = this.signals.start(this.hartId);
        this.enterS(addr, BigInt(this.hartId), opaque);
        this.engine.flushTlb();
        this.signals.setHsmState(this.hartId, HSM.STARTED);
        return true;
      }
      const v = Atomics.load(this.irq.array, this.irq.index);
      Atomics.wait(this.irq.array, this.irq.index, v, MAX_SLEEP_MS);
    }
  }

  private waitWhilePaused(): void {
    this.to('paused');
    this.signals.setParked(this.hartId, true);
    for (;;) {
      const f = Atomics.load(this.header, 1);
      if (this.signals.runState() !== RUN.PAUSED) break;
      Atomics.wait(this.header, 1, f, 1000);
    }
    this.signals.setParked(this.hartId, false);
    if (this.signals.runState() !== RUN.STOPPING) this.to('running');
  }

  /**
   * Run until the machine stops, the guest shuts down, or a fatal trap. Blocks
   * the calling thread (a hart worker) in Atomics.wait while idle or paused.
   */
  run(): HartExit {
    if (this.st !== 'running') throw new HartStateError(`hart ${this.hartId}: run() in state ${this.st}`);
    const builtin = this.boot.mode === 'builtin';
    const e = this.engine;
    for (;;) {
      const rs = this.signals.runState();
      if (rs === RUN.STOPPING) { this.to('stopped'); return { kind: 'stopping' }; }
      if (rs === RUN.PAUSED) { this.waitWhilePaused(); continue; }
      if (builtin && this.signals.hsmState(this.hartId) !== HSM.STARTED) {
        if (!this.park()) continue;
      }
      this.poll();
      const r = e.run(this.batch);
      switch (r.kind) {
        case 'limit': break;
        case 'wfi': this.sleep(); break;
        case 'ecall': {
          if (!this.sbi) return this.fatal(9n, 0n);
          const outcome = this.sbi.call(this.regs);
          e.pc = e.pc + 4n;
          if (outcome === 'shutdown') { this.to('stopped'); return { kind: 'shutdown' }; }
          // 'stop': the SBI moved HSM to STOPPED; park() at the top of the loop.
          break;
        }
        case 'trap': return this.fatal(r.cause, r.tval);
      }
    }
  }

  private fatal(cause: bigint, tval: bigint): HartExit {
    const exit: HartExit = { kind: 'fatal', cause, tval, pc: this.engine.pc, priv: this.engine.priv };
    this.to('stopped');
    return exit;
  }
}
