// Run a short code snippet on a bare hart, for the differential tester that
// compares this core with qemu-riscv64. Bare mode (satp = 0), FS enabled
// (Initial), no interrupts; stops at the first ECALL, at any other trap, or
// after maxInstructions.

import { HartCore, createHartMemory, HartConfigError } from './wasm.ts';
import { PRIV, type EngineKind } from '../engine.ts';

export interface SnippetOptions {
  /** Copied to guest RAM at RAM_BASE; the rest of RAM is zero. */
  ram: Uint8Array;
  /** Bytes of guest RAM (multiple of 4096). Default: ram.length rounded up to 64 KiB, at least 1 MiB. */
  ramSize?: number;
  entry: bigint;
  /** x0..x31 initial values (x0 ignored); missing entries are 0. */
  x?: bigint[];
  /** f0..f31 raw 64-bit patterns; missing entries are 0. */
  f?: bigint[];
  fcsr?: number;
  maxInstructions: number;
  privilege?: 'M' | 'U';
  /** Default: interp. With 'jit', code is translated the first time it runs (threshold 1): snippets run once. */
  engine?: EngineKind;
}

export interface SnippetResult {
  /** x0..x31 as unsigned 64-bit values. */
  x: bigint[];
  /** f0..f31 raw 64-bit patterns (single-precision values NaN-boxed). */
  f: bigint[];
  fcsr: number;
  /** For 'ecall' and 'trap', the address of the instruction that trapped; for 'limit', the next pc. */
  pc: bigint;
  exit: { kind: 'ecall' } | { kind: 'trap'; cause: bigint; tval: bigint } | { kind: 'limit' };
  /** A copy of all of guest RAM after the run. */
  ram: Uint8Array;
}

const cores = new Map<string, HartCore>();

function coreFor(ramSize: number, engine: EngineKind): HartCore {
  const key = `${engine}:${ramSize}`;
  let c = cores.get(key);
  if (!c) {
    c = new HartCore({ memory: createHartMemory(ramSize), hartId: 0, ramSize, mode: 'snippet', engine, jitThreshold: 1 });
    cores.set(key, c);
  }
  return c;
}

const MSTATUS_FS_INITIAL = 1n << 13n;

export function runSnippet(opts: SnippetOptions): SnippetResult {
  const ramSize = opts.ramSize ?? Math.max(1 << 20, Math.ceil(opts.ram.length / 65536) * 65536);
  if (opts.ram.length > ramSize) throw new HartConfigError(`snippet of ${opts.ram.length} bytes does not fit in ramSize ${ramSize}`);
  if (!Number.isInteger(opts.maxInstructions) || opts.maxInstructions < 0) throw new HartConfigError(`maxInstructions must be a non-negative integer, got ${opts.maxInstructions}`);
  const core = coreFor(ramSize, opts.engine ?? 'interp');
  core.reset();
  const ram = core.ram();
  ram.fill(0);
  ram.set(opts.ram);
  for (let i = 1; i < 32; i++) core.setX(i, opts.x?.[i] ?? 0n);
  for (let i = 0; i < 32; i++) core.setF(i, opts.f?.[i] ?? 0n);
  core.writeCsr(0x300, MSTATUS_FS_INITIAL);
  core.writeCsr(0x003, BigInt((opts.fcsr ?? 0) & 0xff));
  core.pc = opts.entry;
  core.priv = opts.privilege === 'U' ? PRIV.U : PRIV.M;
  let exit: SnippetResult['exit'] = { kind: 'limit' };
  let left = opts.maxInstructions;
  while (left > 0) {
    const n = Math.min(left, 1 << 30);
    const r = core.run(n);
    left -= n;
    if (r.kind === 'ecall') { exit = { kind: 'ecall' }; break; }
    if (r.kind === 'trap') { exit = r; break; }
  }
  const x: bigint[] = [];
  const f: bigint[] = [];
  for (let i = 0; i < 32; i++) { x.push(core.x(i)); f.push(core.f(i)); }
  return { x, f, fcsr: Number(core.readCsr(0x003) ?? 0n), pc: core.pc, exit, ram: ram.slice() };
}
