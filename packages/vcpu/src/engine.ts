// The contract between a hart's control loop (hart/hart.ts, the worker) and
// whatever executes guest instructions. Today the interpreter in
// assembly/index.ts (compiled to wasm) implements it through HartCore; a
// JIT can replace it later without touching the run loop, SBI or devices.

/** Why a batch of instructions ended. */
export type EngineExit =
  /** The instruction budget ran out; nothing special happened. */
  | { kind: 'limit' }
  /** ECALL that the host must serve (builtin SBI, or any ECALL in snippet mode); pc is the ECALL's address. */
  | { kind: 'ecall' }
  /** WFI with no interrupt that could wake it; pc is past the WFI. The host sleeps until an interrupt line changes. */
  | { kind: 'wfi' }
  /** A trap the engine cannot deliver itself (snippet mode: any trap; builtin mode: a trap into the absent M-mode firmware). pc is unchanged. */
  | { kind: 'trap'; cause: bigint; tval: bigint };

/** Privilege levels (privileged 1.12 §1.2). */
export const PRIV = { U: 0, S: 1, M: 3 } as const;
export type Priv = (typeof PRIV)[keyof typeof PRIV];

/** How traps are handled: see the header of assembly/index.ts. */
export const ENGINE_MODE = { firmware: 0, builtin: 1, snippet: 2 } as const;
export type EngineMode = keyof typeof ENGINE_MODE;

/** Which engine executes guest code: the interpreter alone, or the translator with the interpreter behind it. */
export const ENGINE_KINDS = ['interp', 'jit'] as const;
export type EngineKind = (typeof ENGINE_KINDS)[number];
/** What a hart's engine reports while it runs (query-processes): the translator's code cache. */
export interface HartEngineInfo {
  hart: number;
  engine: EngineKind;
  /** Translated blocks in the code cache and their generated wasm, bytes (0 for interp). */
  blocks: number;
  codeCacheBytes: number;
  /** Time spent translating, ms. */
  compileMs: number;
  /** Guest instructions run by translated blocks, as of the last translation. */
  translatedInstructions: number;
  /** With Machine `profile` (`vmm run --profile`): where the hart's thread was, sampled. */
  profile?: HartProfile;
}

/**
 * What a hart is doing, by the index the core stores in its WHERE word
 * (WHERE_* in assembly/index.ts; the translator stores 2 while it translates).
 */
export const ENGINE_WHERE = ['interp', 'translated', 'translating', 'helpers', 'host'] as const;
export type EngineWhere = (typeof ENGINE_WHERE)[number];
/** Samples of a hart's WHERE word taken about every millisecond, and the share of them in each place (0..1, summing to 1). */
export type HartProfile = { samples: number } & Record<EngineWhere, number>;

/**
 * Float64 fields per hart in the shared engine-stats buffer (HartWorkerData.engineStats):
 * blocks, code-cache bytes, compile ms, translated instructions (the translator
 * publishes them), and the byte address of the core's WHERE word in the hart memory.
 */
export const ENGINE_STAT_FIELDS = 5;
export const ENGINE_STAT_WHERE = 4;

/** The engine a machine's harts run when nobody chose one (`vmm run --engine`). */
export const DEFAULT_ENGINE: EngineKind = 'jit';

export interface ExecutionEngine {
  readonly hartId: number;
  /** Run at most `maxInstructions` (1..2^31-1) instructions. */
  run(maxInstructions: number): EngineExit;
  /** Reset to the architectural reset state: M-mode, all registers and CSRs zero, TLB empty. */
  reset(): void;
  pc: bigint;
  priv: Priv;
  /** Retired instructions (minstret). */
  readonly instret: bigint;
  x(i: number): bigint;
  setX(i: number, v: bigint): void;
  f(i: number): bigint;
  setF(i: number, v: bigint): void;
  /** CSR access by number without privilege checks; undefined for a CSR that does not exist. */
  readCsr(n: number): bigint | undefined;
  /** false for a CSR that does not exist. */
  writeCsr(n: number, v: bigint): boolean;
  /** Interrupt lines driven from outside the hart, in mip bit positions (MSIP, MTIP, MEIP, SEIP, STIP). */
  setIrqLines(bits: number): void;
  /** Latch software-interrupt edges into mip (an SBI IPI sets SSIP; the guest clears it). */
  raiseSoftBits(bits: number): void;
  /** Is any interrupt pending and enabled in mie (the WFI wake-up condition, §3.3.3)? */
  wfiWake(): boolean;
  flushTlb(): void;
  /** Drop any translated code (SBI remote fence.i); the interpreter has none. */
  fenceI(): void;
}
