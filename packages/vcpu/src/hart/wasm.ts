// Loading the hart core (build/hart.wasm) and instantiating it over a
// shared WebAssembly.Memory. HartCore is the ExecutionEngine of one hart.

import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { WASM_RAM_OFFSET, MAX_HARTS } from '../layout.ts';
import type { AccessSize, PhysBus } from '../bus.ts';
import { wasmIsStale } from '../../scripts/build-wasm.ts';
import { ENGINE_MODE, ENGINE_STAT_WHERE, ENGINE_WHERE, type EngineWhere, type EngineExit, type EngineKind, type EngineMode, type ExecutionEngine, type Priv } from '../engine.ts';
import { JIT_SLOTS, JIT_THRESHOLD, Translator, type JitCoreExports, type JitStats } from '../jit/translator.ts';

const BUILD_SCRIPT = fileURLToPath(new URL('../../scripts/build-wasm.ts', import.meta.url));
/** Where the compiled hart core lives (git-ignored; `pnpm --filter @vmm/vcpu build`). */
export const HART_WASM_URL = new URL('../../build/hart.wasm', import.meta.url);

const PAGE = 65536;
/** Pages of the shared memory for `ramSize` bytes of guest RAM (state + RAM window). */
export function wasmMemoryPages(ramSize: number): number {
  if (!Number.isInteger(ramSize) || ramSize <= 0 || ramSize % 4096 !== 0) throw new HartConfigError(`ramSize must be a positive multiple of 4096, got ${ramSize}`);
  const pages = Math.ceil((WASM_RAM_OFFSET + ramSize) / PAGE);
  if (pages > 65536) throw new HartConfigError(`ramSize ${ramSize} does not fit in a 4 GiB wasm memory`);
  return pages;
}

/** A shared memory whose RAM window the machine replaces with its memfd (mmapFixedOver). */
export function createHartMemory(ramSize: number): WebAssembly.Memory {
  const pages = wasmMemoryPages(ramSize);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

export class HartConfigError extends Error {
  readonly code = 'VCPU_HART_CONFIG';
  constructor(message: string) { super(message); this.name = 'HartConfigError'; }
}

let cachedModule: WebAssembly.Module | undefined;

/**
 * The compiled hart core. Builds it first (synchronously, via the package's
 * build script) when build/hart.wasm is missing or older than its sources.
 */
export function loadHartModule(): WebAssembly.Module {
  if (cachedModule) return cachedModule;
  if (wasmIsStale()) execFileSync(process.execPath, [BUILD_SCRIPT], { stdio: ['ignore', 'ignore', 'inherit'] });
  cachedModule = new WebAssembly.Module(readFileSync(HART_WASM_URL));
  return cachedModule;
}

interface CoreExports {
  run(n: number): number;
  init(id: number, mode: number, ram: number): void;
  reset(): void;
  setMode(m: number): void;
  xBase(): number;
  fBase(): number;
  scratchAddr(): number;
  getPc(): bigint;
  setPc(v: bigint): void;
  getPriv(): number;
  setPriv(p: number): void;
  getInstret(): bigint;
  exitCauseOf(): bigint;
  exitTvalOf(): bigint;
  setIrqLines(bits: bigint): void;
  raiseSoftBits(bits: bigint): void;
  wfiWake(): number;
  hostCsrRead(n: number): bigint;
  hostCsrOk(): number;
  hostCsrWrite(n: number, v: bigint): number;
  flushTlb(): void;
  expandCompressed(h: number): number;
  setJit(on: number): void;
  setJitThreshold(n: number): void;
  whereAddr(): number;
}

export interface HartCoreOptions {
  memory: WebAssembly.Memory;
  hartId: number;
  ramSize: number;
  mode: EngineMode;
  /** MMIO (everything outside RAM). Without one, every non-RAM access is an access fault. */
  bus?: PhysBus;
  /** The compiled core (e.g. posted to a worker); default: loadHartModule(). */
  module?: WebAssembly.Module;
  /** The `time` CSR in TIMEBASE_HZ ticks (HartSignals.nowTicks). Default: 0. */
  time?: () => bigint;
  /** Execution engine: the interpreter alone, or with the translator (src/jit). Default: interp. */
  engine?: EngineKind;
  /** Executions of a block entry before it is translated (default JIT_THRESHOLD; 1 = at once, for tests). */
  jitThreshold?: number;
  /** Where the translator publishes its code-cache figures for other threads (ENGINE_STAT_FIELDS doubles). */
  engineStats?: Float64Array;
  /** Warnings from the translator (a generated block that failed to compile, logged once). */
  log?: (msg: string, fields: Record<string, unknown>) => void;
}

const EXIT_KIND = ['limit', 'ecall', 'wfi', 'trap'] as const;
const U64 = (1n << 64n) - 1n;

/** One hart's wasm instance. */
export class HartCore implements ExecutionEngine {
  readonly hartId: number;
  readonly memory: WebAssembly.Memory;
  readonly ramSize: number;
  private readonly e: CoreExports;
  readonly engine: EngineKind;
  /** The translator, when engine is 'jit'. */
  readonly jit: Translator | undefined;
  private readonly xs: BigUint64Array;
  private readonly fs: BigUint64Array;
  private readonly whereWord: Int32Array;

  constructor(opts: HartCoreOptions) {
    const { memory, hartId, ramSize, bus } = opts;
    if (!Number.isInteger(hartId) || hartId < 0 || hartId >= MAX_HARTS) throw new HartConfigError(`hartId must be 0..${MAX_HARTS - 1}, got ${hartId}`);
    if (memory.buffer.byteLength < WASM_RAM_OFFSET + ramSize) throw new HartConfigError(`memory of ${memory.buffer.byteLength} bytes is too small for ramSize ${ramSize}`);
    this.hartId = hartId;
    this.memory = memory;
    this.ramSize = ramSize;
    const time = opts.time ?? (() => 0n);
    const scratchBox: { v?: BigUint64Array } = {};
    this.engine = opts.engine ?? 'interp';
    const jitBox: { t?: Translator } = {};
    const table = new WebAssembly.Table({ element: 'anyfunc', initial: this.engine === 'jit' ? JIT_SLOTS : 1 });
    const imports = {
      env: {
        memory,
        table,
        jitCompile: (hp: number, pc: bigint): number => jitBox.t?.compile(hp >>> 0, BigInt.asUintN(64, pc)) ?? 0,
        mmioLoad: (pa: number, size: number): number => {
          const v = bus?.load(pa, size as AccessSize, hartId) ?? null;
          if (v === null) return 1;
          scratchBox.v![0] = BigInt.asUintN(64, v);
          return 0;
        },
        mmioStore: (pa: number, size: number, v: bigint): number => (bus?.store(pa, size as AccessSize, BigInt.asUintN(size * 8, v), hartId) ? 0 : 1),
        hostTime: time,
      },
    };
    const inst = new WebAssembly.Instance(opts.module ?? loadHartModule(), imports);
    this.e = inst.exports as unknown as CoreExports;
    this.e.init(hartId, ENGINE_MODE[opts.mode], ramSize);
    if (this.engine === 'jit') {
      jitBox.t = this.jit = new Translator({ memory, table, core: inst.exports as unknown as JitCoreExports, log: opts.log, publish: opts.engineStats });
      this.e.setJitThreshold(opts.jitThreshold ?? JIT_THRESHOLD);
      this.e.setJit(1);
    }
    this.whereWord = new Int32Array(memory.buffer, this.e.whereAddr(), 1);
    if (opts.engineStats) opts.engineStats[ENGINE_STAT_WHERE] = this.e.whereAddr();
    scratchBox.v = new BigUint64Array(memory.buffer, this.e.scratchAddr(), 1);
    this.xs = new BigUint64Array(memory.buffer, this.e.xBase(), 32);
    this.fs = new BigUint64Array(memory.buffer, this.e.fBase(), 32);
  }

  run(maxInstructions: number): EngineExit {
    const r = this.e.run(maxInstructions | 0);
    const kind = EXIT_KIND[r];
    if (kind === 'trap') return { kind, cause: BigInt.asUintN(64, this.e.exitCauseOf()), tval: BigInt.asUintN(64, this.e.exitTvalOf()) };
    if (kind === undefined) throw new Error(`hart core returned unknown exit ${r}`);
    return { kind };
  }
  /** What the hart is doing now (read from another thread, it is what a profiler samples). */
  where(): EngineWhere { return ENGINE_WHERE[Atomics.load(this.whereWord, 0)]!; }
  /** Cause/tval of the last 'ecall'/'trap' exit. */
  lastCause(): bigint { return BigInt.asUintN(64, this.e.exitCauseOf()); }

  reset(): void { this.e.reset(); }
  setMode(mode: EngineMode): void { this.e.setMode(ENGINE_MODE[mode]); }
  get pc(): bigint { return BigInt.asUintN(64, this.e.getPc()); }
  set pc(v: bigint) { this.e.setPc(BigInt.asIntN(64, v)); }
  get priv(): Priv { return this.e.getPriv() as Priv; }
  set priv(p: Priv) { this.e.setPriv(p); }
  get instret(): bigint { return BigInt.asUintN(64, this.e.getInstret()); }
  x(i: number): bigint { return i === 0 ? 0n : this.xs[i]!; }
  setX(i: number, v: bigint): void { if (i !== 0) this.xs[i] = v & U64; }
  f(i: number): bigint { return this.fs[i]!; }
  setF(i: number, v: bigint): void { this.fs[i] = v & U64; }
  readCsr(n: number): bigint | undefined {
    const v = this.e.hostCsrRead(n);
    return this.e.hostCsrOk() ? BigInt.asUintN(64, v) : undefined;
  }
  writeCsr(n: number, v: bigint): boolean { return this.e.hostCsrWrite(n, BigInt.asIntN(64, v)) !== 0; }
  setIrqLines(bits: number): void { this.e.setIrqLines(BigInt(bits >>> 0)); }
  raiseSoftBits(bits: number): void { this.e.raiseSoftBits(BigInt(bits >>> 0)); }
  wfiWake(): boolean { return this.e.wfiWake() !== 0; }
  flushTlb(): void { this.e.flushTlb(); }
  /** FENCE.I requested from outside (SBI remote fence.i): drop translated code. */
  fenceI(): void { this.jit?.flush(); }
  /** Translator counters (undefined for the interpreter). */
  jitStats(): JitStats | undefined {
    const j = this.jit;
    if (!j) return undefined;
    const c = j.core;
    return { ...j.stats, revalidated: j.stats.revalidated + Number(c.jitRevalidationCount()), jitInstructions: Number(c.jitInstructions()), entries: Number(c.jitEntryCount()), fenceI: c.jitFenceCount() >>> 0, codeWrites: c.jitCodeWriteCount() >>> 0 };
  }
  /** The 32-bit expansion of a 16-bit instruction (0 = illegal); exposed for decoder tests. */
  expandCompressed(h: number): number { return this.e.expandCompressed(h) >>> 0; }
  /** Guest RAM as bytes (RAM_BASE at index 0). */
  ram(): Uint8Array { return new Uint8Array(this.memory.buffer, WASM_RAM_OFFSET, this.ramSize); }
}
