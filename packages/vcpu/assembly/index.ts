// RV64GC hart core: RV64IMAFDC + Zicsr + Zifencei + Zicntr, M/S/U privilege,
// Sv39/Sv48 MMU, written in AssemblyScript so that XLEN=64 integers are
// native wasm i64.
//
// ─── Host interface ────────────────────────────────────────────────────────
// Memory: the module imports one shared `env.memory`. Guest RAM is the
// region [WASM_RAM_OFFSET, WASM_RAM_OFFSET + ramSize), guest physical
// RAM_BASE maps to WASM_RAM_OFFSET. Below 16 MiB:
//   - AS static data (constants only: the runtime is `stub` and this core
//     never allocates, so instances sharing the memory never race on a heap);
//   - hart h's state at STATE_BASE + h * STATE_STRIDE: x[32], f[32], the
//     MMIO value slot, PMP registers and its TLBs (layout below);
//   - the compressed-instruction expansion table at CTAB (a pure function
//     of the 16 bits, filled lazily; concurrent fills write equal values).
// Every other piece of hart state (pc, privilege, CSRs) is a wasm global,
// i.e. private to the instance, hence to the hart's worker thread.
//
// Imports (module "env"):
//   mmioLoad(paddr: f64, size: i32): i32    0 = ok (value stored as u64 at
//                                           stateBase()+SCRATCH), else access fault
//   mmioStore(paddr: f64, size: i32, v: i64): i32   0 = ok, else access fault
//   hostTime(): i64                         the `time` CSR (10 MHz ticks)
//
// Exports: init(hartId, mode, ramSize) and reset(); run(n) → EXIT_* after at
// most n instructions (EXIT_LIMIT, EXIT_ECALL with pc at the ECALL, EXIT_WFI
// with pc past the WFI, EXIT_TRAP with exitCauseOf()/exitTvalOf()); pc,
// privilege and CSRs by number (hostCsrRead/hostCsrOk/hostCsrWrite, no
// privilege checks); x/f registers live in memory at xBase()/fBase();
// setIrqLines(bits) = interrupt lines sampled by the host between batches
// (mip positions), raiseSoftBits(bits) latches SSIP edges, wfiWake() is the
// WFI wake-up condition, flushTlb() serves REQ.TLB_FLUSH, expandCompressed()
// exposes the RVC expander for tests. Interrupts are checked at the start of
// every run() and after any CSR write or xRET; WFI never blocks inside wasm.
//
// Boot modes: MODE_FIRMWARE (traps delivered to M-mode as hardware does),
// MODE_BUILTIN (an ECALL from S-mode exits to the host SBI; a trap that would
// reach M-mode exits as EXIT_TRAP since no firmware is there), MODE_SNIPPET
// (every trap exits without changing state; for the differential tester).

import * as fpu from './fpu';

// ─── constants ────────────────────────────────────────────────────────────
const RAM_BASE: u64 = 0x80000000;
const WASM_RAM_OFFSET: u64 = 16 * 1024 * 1024;

const STATE_BASE: usize = 0x100000;
const STATE_STRIDE: usize = 0x10000;
const X_OFF: usize = 0;
const F_OFF: usize = 256;
const SCRATCH: usize = 512;
const PMPADDR_OFF: usize = 1024; // 16 × u64
const TLB_BITS: u64 = 10;
const TLB_N: usize = 1 << <usize>TLB_BITS;
const TLB_MASK: u64 = (1 << TLB_BITS) - 1;
// Three TLBs (fetch, load, store): tags then deltas, each TLB_N × u64.
const TLB_TAGS: usize = 4096;
const TLB_DELTAS: usize = TLB_TAGS + 3 * TLB_N * 8;
const CTAB: usize = 0x200000; // 65536 × u32
// Translator (src/jit): per-hart state offsets and the block lookup table (see the end of this file).
const JIT_PC: usize = 1280; // u64: next pc written by a translated block on exit
const JIT_DKEY: usize = 1288; // u64: mirror of dKey for the inlined TLB probe
const JIT_FKEY: usize = 1304; // u64: mirror of fKey for the fetch-TLB probe of chained blocks
// i32: what this hart is doing, for a sampling profiler in another thread (Machine `profile`;
// the names are ENGINE_WHERE in src/engine.ts): one store at each change, none per instruction.
const WHERE: usize = 1296;
const WHERE_INTERP: i32 = 0; // the interpreter loop (and its block lookups)
const WHERE_BLOCK: i32 = 1; // translated code
// 2: translating (set by the translator around jitCompile)
const WHERE_HELPER: i32 = 3; // a translated block's slow path (TLB refill, page crossing, MMIO)
const WHERE_HOST: i32 = 4; // outside run(): the host's loop (SBI, polling, WFI sleep)
// Per-hart translator area at JIT_TAB_BASE + hartId × JIT_TAB_STRIDE (8 harts end at 0xf00000):
const JIT_TAB_BASE: usize = 0x400000;
const JIT_TAB_STRIDE: usize = 0x160000;
const JIT_TAB_BITS: u32 = 15; // lookup table: 32 Ki entries × 16 bytes
const JIT_TAB_MASK: u32 = (1 << JIT_TAB_BITS) - 1;
const JIT_GEN: usize = 16 << JIT_TAB_BITS; // u32: code generation, bumped by FENCE.I, remote fence.i, stores into code
const JIT_RET: usize = JIT_GEN + 8; // u32: shadow address of the block jitCompile returned
const JIT_CODEMAP: usize = JIT_GEN + 64; // 1 bit per 4 KiB page of RAM (128 KiB for 4 GiB): pages holding translated code
const JIT_SHADOW: usize = JIT_CODEMAP + 0x20000 + 0xc0; // to the end of the area: copies of translated guest code

export const MODE_FIRMWARE: i32 = 0;
export const MODE_BUILTIN: i32 = 1;
export const MODE_SNIPPET: i32 = 2;

export const EXIT_LIMIT: i32 = 0;
export const EXIT_ECALL: i32 = 1;
export const EXIT_WFI: i32 = 2;
export const EXIT_TRAP: i32 = 3;

const ACC_FETCH: i32 = 0;
const ACC_LOAD: i32 = 1;
const ACC_STORE: i32 = 2;

// Major opcodes, insn[6:0] (unprivileged ISA 20191213 Table 24.1).
const OPC_LOAD: u32 = 0x03;
const OPC_LOAD_FP: u32 = 0x07;
const OPC_MISC_MEM: u32 = 0x0f;
const OPC_OP_IMM: u32 = 0x13;
const OPC_AUIPC: u32 = 0x17;
const OPC_OP_IMM_32: u32 = 0x1b;
const OPC_STORE: u32 = 0x23;
const OPC_STORE_FP: u32 = 0x27;
const OPC_AMO: u32 = 0x2f;
const OPC_OP: u32 = 0x33;
const OPC_LUI: u32 = 0x37;
const OPC_OP_32: u32 = 0x3b;
const OPC_MADD: u32 = 0x43;
const OPC_MSUB: u32 = 0x47;
const OPC_NMSUB: u32 = 0x4b;
const OPC_NMADD: u32 = 0x4f;
const OPC_OP_FP: u32 = 0x53;
const OPC_BRANCH: u32 = 0x63;
const OPC_JALR: u32 = 0x67;
const OPC_JAL: u32 = 0x6f;
const OPC_SYSTEM: u32 = 0x73;

// Internal events raised by an instruction (ev): exception causes 0..15, or:
const EV_NONE: i32 = -1;
const EV_WFI: i32 = 100; // the instruction completed; exit to the host to sleep
const EV_IRQ: i32 = 101; // the instruction completed; re-check interrupts (CSR write, xRET)

// mstatus bits (privileged 1.12 §3.1.6)
const MS_SIE: u64 = 1 << 1;
const MS_MIE: u64 = 1 << 3;
const MS_SPIE: u64 = 1 << 5;
const MS_MPIE: u64 = 1 << 7;
const MS_SPP: u64 = 1 << 8;
const MS_MPP: u64 = 3 << 11;
const MS_FS: u64 = 3 << 13;
const MS_MPRV: u64 = 1 << 17;
const MS_SUM: u64 = 1 << 18;
const MS_MXR: u64 = 1 << 19;
const MS_TVM: u64 = 1 << 20;
const MS_TW: u64 = 1 << 21;
const MS_TSR: u64 = 1 << 22;
const MS_UXL_SXL: u64 = (<u64>2 << 32) | (<u64>2 << 34);
const MS_SD: u64 = <u64>1 << 63;
const MSTATUS_WMASK: u64 = MS_SIE | MS_MIE | MS_SPIE | MS_MPIE | MS_SPP | MS_MPP | MS_FS | MS_MPRV | MS_SUM | MS_MXR | MS_TVM | MS_TW | MS_TSR;
const SSTATUS_RMASK: u64 = MS_SIE | MS_SPIE | MS_SPP | MS_FS | MS_SUM | MS_MXR | (<u64>3 << 32) | MS_SD;
const SSTATUS_WMASK: u64 = MS_SIE | MS_SPIE | MS_SPP | MS_FS | MS_SUM | MS_MXR;

// mip/mie bits (§3.1.9)
const IP_SSI: u64 = 1 << 1;
const IP_MSI: u64 = 1 << 3;
const IP_STI: u64 = 1 << 5;
const IP_MTI: u64 = 1 << 7;
const IP_SEI: u64 = 1 << 9;
const IP_MEI: u64 = 1 << 11;
const MIP_WMASK: u64 = IP_SSI | IP_STI | IP_SEI;
const MIE_MASK: u64 = 0xaaa;
const MIDELEG_MASK: u64 = IP_SSI | IP_STI | IP_SEI;
// Exceptions that can be delegated: all but ECALL from M (11) and reserved ones.
const MEDELEG_MASK: u64 = 0xb3ff;

// misa: RV64 (MXL=2) with A C D F I M S U.
const MISA: u64 = (<u64>2 << 62) | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 12) | (1 << 18) | (1 << 20);

// PTE bits (§4.3.1)
const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_U: u64 = 16;
const PTE_A: u64 = 64;
const PTE_D: u64 = 128;
const PPN_MASK: u64 = 0xfffffffffff; // 44 bits

// ─── hart state (instance globals) ────────────────────────────────────────
let hartId: u64 = 0;
let base: usize = STATE_BASE;
let xb: usize = STATE_BASE;
let fb: usize = STATE_BASE + F_OFF;
let tlbTags: usize = STATE_BASE + TLB_TAGS;
let tlbDeltas: usize = STATE_BASE + TLB_DELTAS;
let mode: i32 = MODE_FIRMWARE;
let ramSize: u64 = 0;

let pc: u64 = 0;
let priv: u32 = 3;
let ev: i32 = EV_NONE;
let evTval: u64 = 0;
let exitReason: i32 = EXIT_LIMIT;
let exitCause: u64 = 0;
let exitTval: u64 = 0;

let mstatus: u64 = 0;
let medeleg: u64 = 0;
let mideleg: u64 = 0;
let mie: u64 = 0;
let mipSw: u64 = 0;
let mipExt: u64 = 0;
let mtvec: u64 = 0;
let stvec: u64 = 0;
let mepc: u64 = 0;
let sepc: u64 = 0;
let mcause: u64 = 0;
let scause: u64 = 0;
let mtval: u64 = 0;
let stval: u64 = 0;
let mscratch: u64 = 0;
let sscratch: u64 = 0;
let satp: u64 = 0;
let mcounteren: u64 = 0;
let scounteren: u64 = 0;
let menvcfg: u64 = 0;
let senvcfg: u64 = 0;
let mcountinhibit: u64 = 0;
let pmpcfg0: u64 = 0;
let pmpcfg2: u64 = 0;
let fflags: u32 = 0;
let frm: u32 = 0;
let instret: u64 = 0;
let cycleDelta: u64 = 0;
let batchN: i32 = 0;
let batchLeft: i32 = 0;

// Reservation set for LR/SC (one per hart, §8.2): host address and the value LR saw.
let resAddr: usize = 0;
let resVal: u64 = 0;
let resValid: bool = false;

// Fetch page cache: virtual page of pc and its delta to the wasm address.
let fetchPage: u64 = 1; // 1 = invalid (never page aligned)
let fetchDelta: u64 = 0;
// Key bits (52..55) of data-TLB tags: effective privilege, SUM, MXR.
let dKey: u64 = 0;
let fKey: u64 = 0;

// ─── imports ──────────────────────────────────────────────────────────────
@external("env", "mmioLoad") declare function mmioLoad(pa: f64, size: i32): i32;
@external("env", "mmioStore") declare function mmioStore(pa: f64, size: i32, v: u64): i32;
@external("env", "hostTime") declare function hostTime(): u64;
@external("env", "jitCompile") declare function jitCompile(hp: u32, pc: u64): i32;

// ─── register helpers ─────────────────────────────────────────────────────
@inline function X(r: u32): u64 { return load<u64>(xb + (<usize>r << 3)); }
@inline function setX(r: u32, v: u64): void { if (r != 0) store<u64>(xb + (<usize>r << 3), v); }
@inline function XR(b: usize, r: u32): u64 { return load<u64>(b + (<usize>r << 3)); }
@inline function setXR(b: usize, r: u32, v: u64): void { if (r != 0) store<u64>(b + (<usize>r << 3), v); }
@inline function F(r: u32): u64 { return load<u64>(fb + (<usize>r << 3)); }
@inline function setF(r: u32, v: u64): void { store<u64>(fb + (<usize>r << 3), v); mstatus |= MS_FS; }
// NaN-boxing (ISA §12.2): a single-precision operand not boxed in ones reads as the canonical NaN.
@inline function F32(r: u32): u32 { const v = F(r); return (v >>> 32) == 0xffffffff ? <u32>v : 0x7fc00000; }
@inline function setF32(r: u32, v: u32): void { setF(r, 0xffffffff00000000 | <u64>v); }
@inline function sext32(v: u64): u64 { return <u64><i64><i32>v; }

@inline function raise(cause: i32, tval: u64): void { ev = cause; evTval = tval; }

function updateKeys(): void {
  let ep = priv;
  if ((mstatus & MS_MPRV) != 0 && priv == 3) ep = <u32>((mstatus >> 11) & 3);
  let k = <u64>ep;
  if (mstatus & MS_SUM) k |= 4;
  if (mstatus & MS_MXR) k |= 8;
  dKey = k << 52;
  store<u64>(base + JIT_DKEY, dKey);
  fKey = <u64>priv << 52;
  store<u64>(base + JIT_FKEY, fKey);
  fetchPage = 1;
}

@inline function effPriv(): u32 { return <u32>(dKey >> 52) & 3; }

export function flushTlb(): void {
  memory.fill(tlbTags, 0xff, 3 * TLB_N * 8);
  fetchPage = 1;
}

// ─── MMU (privileged 1.12 §4.3–4.5) ───────────────────────────────────────
function accessFault(acc: i32): i32 { return acc == ACC_FETCH ? 1 : acc == ACC_LOAD ? 5 : 7; }
function pageFault(acc: i32): i32 { return acc == ACC_FETCH ? 12 : acc == ACC_LOAD ? 13 : 15; }

/** Virtual → physical. On a fault sets ev/evTval and returns 0. */
function translate(va: u64, acc: i32, ep: u32): u64 {
  const m = <u32>(satp >>> 60);
  if (ep == 3 || m == 0) return va;
  const levels: i32 = m == 8 ? 3 : 4;
  const vaBits = 12 + 9 * levels;
  // Bits above the VA width must equal its top bit (§4.4.1, §4.5.1).
  const top = <i64>va >> <i64>(vaBits - 1);
  if (top != 0 && top != -1) { raise(pageFault(acc), va); return 0; }
  let a = (satp & PPN_MASK) << 12;
  for (let i = levels - 1; i >= 0; i--) {
    const pteAddr = a + (((va >>> <u64>(12 + 9 * i)) & 511) << 3);
    const off = pteAddr - RAM_BASE;
    if (off >= ramSize) { raise(accessFault(acc), va); return 0; }
    const hp = <usize>(WASM_RAM_OFFSET + off);
    const pte = atomic.load<u64>(hp);
    if ((pte & PTE_V) == 0 || ((pte & PTE_R) == 0 && (pte & PTE_W) != 0) || (pte >>> 54) != 0) { raise(pageFault(acc), va); return 0; }
    if ((pte & (PTE_R | PTE_X)) == 0) {
      if (i == 0) { raise(pageFault(acc), va); return 0; }
      a = ((pte >>> 10) & PPN_MASK) << 12;
      continue;
    }
    // Leaf: permission checks (§4.3.2 step 5).
    if (acc == ACC_FETCH) {
      if ((pte & PTE_X) == 0) { raise(pageFault(acc), va); return 0; }
      if (ep == 0 ? (pte & PTE_U) == 0 : (pte & PTE_U) != 0) { raise(pageFault(acc), va); return 0; }
    } else {
      if (acc == ACC_LOAD) {
        if ((pte & PTE_R) == 0 && ((mstatus & MS_MXR) == 0 || (pte & PTE_X) == 0)) { raise(pageFault(acc), va); return 0; }
      } else if ((pte & PTE_W) == 0) { raise(pageFault(acc), va); return 0; }
      if (ep == 0) {
        if ((pte & PTE_U) == 0) { raise(pageFault(acc), va); return 0; }
      } else if ((pte & PTE_U) != 0 && (mstatus & MS_SUM) == 0) { raise(pageFault(acc), va); return 0; }
    }
    const ppn = (pte >>> 10) & PPN_MASK;
    const lowBits = <u64>(9 * i);
    // Misaligned superpage (step 6).
    if (i > 0 && (ppn & ((<u64>1 << lowBits) - 1)) != 0) { raise(pageFault(acc), va); return 0; }
    // A/D updated in the PTE atomically, as QEMU does (Svadu behaviour, §4.3.2 step 7).
    const need = PTE_A | (acc == ACC_STORE ? PTE_D : 0);
    if ((pte & need) != need) {
      if (atomic.cmpxchg<u64>(hp, pte, pte | need) != pte) return translate(va, acc, ep);
    }
    const pageMask = (<u64>1 << (12 + lowBits)) - 1;
    return ((ppn << 12) & ~pageMask) | (va & pageMask);
  }
  raise(pageFault(acc), va);
  return 0;
}

@inline function ramOff(pa: u64): u64 { return pa - RAM_BASE; }

// Install a TLB entry for a RAM page. kind: 0 fetch, 1 load, 2 store.
function tlbInstall(kind: i32, va: u64, pa: u64, key: u64): void {
  // Stores to a page holding translated code stay on the slow path (storeSlow notices them).
  if (kind == ACC_STORE && jitOn && jitIsCodePage(ramOff(pa))) return;
  const vpn = va >>> 12;
  const i = <usize>(kind) * TLB_N + <usize>(vpn & TLB_MASK);
  store<u64>(tlbTags + (i << 3), vpn | key);
  store<u64>(tlbDeltas + (i << 3), (WASM_RAM_OFFSET + ramOff(pa & ~0xfff)) - (va & ~0xfff));
}

// ─── data access ──────────────────────────────────────────────────────────
// Fast path: TLB hit on a RAM page and the access within one page.
@inline function tlbHost(kind: i32, va: u64, size: u64): usize {
  const vpn = va >>> 12;
  const i = <usize>(kind) * TLB_N + <usize>(vpn & TLB_MASK);
  if (load<u64>(tlbTags + (i << 3)) == (vpn | dKey) && (va & 0xfff) <= 0x1000 - size) {
    return <usize>(va + load<u64>(tlbDeltas + (i << 3)));
  }
  return 0;
}

function rawLoad(h: usize, size: i32): u64 {
  if (size == 8) return load<u64>(h);
  if (size == 4) return <u64>load<u32>(h);
  if (size == 2) return <u64>load<u16>(h);
  return <u64>load<u8>(h);
}
function rawStore(h: usize, size: i32, v: u64): void {
  if (size == 8) store<u64>(h, v);
  else if (size == 4) store<u32>(h, <u32>v);
  else if (size == 2) store<u16>(h, <u16>v);
  else store<u8>(h, <u8>v);
}

function loadSlow(va: u64, size: i32): u64 {
  if ((va & 0xfff) + <u64>size > 0x1000) {
    // Misaligned across a page boundary: byte by byte (each byte may fault with its own address).
    let v: u64 = 0;
    for (let k = 0; k < size; k++) {
      const b = loadByte(va + <u64>k);
      if (ev != EV_NONE) return 0;
      v |= b << (<u64>k << 3);
    }
    return v;
  }
  const pa = translate(va, ACC_LOAD, effPriv());
  if (ev != EV_NONE) return 0;
  const off = ramOff(pa);
  if (off < ramSize) {
    tlbInstall(ACC_LOAD, va, pa, dKey);
    return rawLoad(<usize>(WASM_RAM_OFFSET + off), size);
  }
  if (pa >= (<u64>1 << 53) || mmioLoad(<f64>pa, size) != 0) { raise(5, va); return 0; }
  return load<u64>(base + SCRATCH);
}

function storeSlow(va: u64, size: i32, v: u64): void {
  if ((va & 0xfff) + <u64>size > 0x1000) {
    // Check both pages first so that a fault on the second leaves memory untouched.
    translate(va, ACC_STORE, effPriv());
    if (ev != EV_NONE) return;
    translate((va + <u64>size - 1) & ~0xfff, ACC_STORE, effPriv());
    if (ev != EV_NONE) { evTval = (va + <u64>size - 1) & ~0xfff; return; }
    for (let k = 0; k < size; k++) {
      storeByte(va + <u64>k, v >>> (<u64>k << 3));
      if (ev != EV_NONE) return;
    }
    return;
  }
  const pa = translate(va, ACC_STORE, effPriv());
  if (ev != EV_NONE) return;
  const off = ramOff(pa);
  if (off < ramSize) {
    tlbInstall(ACC_STORE, va, pa, dKey);
    rawStore(<usize>(WASM_RAM_OFFSET + off), size, v);
    if (jitOn && jitIsCodePage(off)) jitCodeWritten(off);
    return;
  }
  if (pa >= (<u64>1 << 53) || mmioStore(<f64>pa, size, v) != 0) raise(7, va);
}

function loadByte(va: u64): u64 { return loadN(va, 1); }
function storeByte(va: u64, v: u64): void { storeN(va, 1, v); }
@inline function loadN(va: u64, size: i32): u64 {
  const h = tlbHost(ACC_LOAD, va, <u64>size);
  if (h != 0) return rawLoad(h, size);
  return loadSlow(va, size);
}
@inline function storeN(va: u64, size: i32, v: u64): void {
  const h = tlbHost(ACC_STORE, va, <u64>size);
  if (h != 0) { rawStore(h, size, v); return; }
  storeSlow(va, size, v);
}

/** Host address for an AMO/LR/SC (must be naturally aligned RAM). 0 on fault. */
function amoHost(va: u64, size: i32, acc: i32): usize {
  if ((va & (<u64>size - 1)) != 0) { raise(acc == ACC_LOAD ? 4 : 6, va); return 0; }
  const h = tlbHost(acc, va, <u64>size);
  if (h != 0) return h;
  const pa = translate(va, acc, effPriv());
  if (ev != EV_NONE) return 0;
  const off = ramOff(pa);
  if (off >= ramSize) { raise(acc == ACC_LOAD ? 5 : 7, va); return 0; }
  tlbInstall(acc, va, pa, dKey);
  return <usize>(WASM_RAM_OFFSET + off);
}

// ─── instruction fetch ────────────────────────────────────────────────────
/**
 * Slow fetch: refill the fetch page from the fetch TLB, or translate and
 * install the page there (RAM only: fetching from a device is an access
 * fault); handle a 32-bit instruction spanning two pages. The fetch TLB is
 * keyed by privilege only (fKey): SUM and MXR do not apply to fetches
 * (privileged 1.12 §3.1.6.3), and satp writes and SFENCE.VMA flush it.
 */
function fetchSlow(va: u64): u32 {
  const vpn = va >>> 12;
  const slot = <usize>(vpn & TLB_MASK) << 3; // kind ACC_FETCH = 0: the first TLB
  let delta: u64;
  if (load<u64>(tlbTags + slot) == (vpn | fKey)) {
    delta = load<u64>(tlbDeltas + slot);
  } else {
    const pa = translate(va, ACC_FETCH, priv);
    if (ev != EV_NONE) return 0;
    const off = ramOff(pa);
    if (off >= ramSize || (off & 1) != 0) { raise(1, va); return 0; }
    tlbInstall(ACC_FETCH, va, pa, fKey);
    delta = (WASM_RAM_OFFSET + (off & ~0xfff)) - (va & ~0xfff);
  }
  fetchPage = va & ~0xfff;
  fetchDelta = delta;
  const h = <usize>(va + fetchDelta);
  if ((va & 0xfff) <= 0xffc) return load<u32>(h);
  const lo = <u32>load<u16>(h);
  if ((lo & 3) != 3) return lo;
  // The upper half lies on the next page (C extension allows this, §16.1).
  const va2 = va + 2;
  const pa2 = translate(va2, ACC_FETCH, priv);
  if (ev != EV_NONE) return 0;
  const off2 = ramOff(pa2);
  if (off2 >= ramSize) { raise(1, va2); return 0; }
  return lo | (<u32>load<u16>(<usize>(WASM_RAM_OFFSET + off2)) << 16);
}

// ─── compressed instructions (ISA §16) ────────────────────────────────────
@inline function encI(op: u32, rd: u32, f3: u32, rs1: u32, imm: i32): u32 { return ((<u32>imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op; }
@inline function encS(op: u32, f3: u32, rs1: u32, rs2: u32, imm: i32): u32 { return (((<u32>imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((<u32>imm & 0x1f) << 7) | op; }
@inline function encR(op: u32, rd: u32, f3: u32, rs1: u32, rs2: u32, f7: u32): u32 { return (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op; }
function encB(f3: u32, rs1: u32, rs2: u32, imm: i32): u32 {
  const u = <u32>imm;
  return (((u >> 12) & 1) << 31) | (((u >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (((u >> 1) & 0xf) << 8) | (((u >> 11) & 1) << 7) | 0x63;
}
function encJ(rd: u32, imm: i32): u32 {
  const u = <u32>imm;
  return (((u >> 20) & 1) << 31) | (((u >> 1) & 0x3ff) << 21) | (((u >> 11) & 1) << 20) | (((u >> 12) & 0xff) << 12) | (rd << 7) | 0x6f;
}
@inline function sext(v: u32, bits: i32): i32 { return (<i32>(v << <u32>(32 - bits))) >> (32 - bits); }

/** Expand a 16-bit instruction to its 32-bit equivalent; 0 if illegal/reserved. */
function expandC(h: u32): u32 {
  const op = h & 3;
  const f3 = (h >> 13) & 7;
  const rdp = ((h >> 2) & 7) + 8; // rd'/rs2'
  const rs1p = ((h >> 7) & 7) + 8;
  const rd = (h >> 7) & 31;
  const rs2 = (h >> 2) & 31;
  const imm6 = sext(((h >> 7) & 0x20) | ((h >> 2) & 0x1f), 6);
  if (op == 0) {
    switch (f3) {
      case 0: { // C.ADDI4SPN
        const imm = ((h >> 7) & 0x30) | ((h >> 1) & 0x3c0) | ((h >> 4) & 4) | ((h >> 2) & 8);
        if (imm == 0) return 0;
        return encI(0x13, rdp, 0, 2, <i32>imm);
      }
      case 1: return encI(0x07, rdp, 3, rs1p, <i32>(((h >> 7) & 0x38) | ((h << 1) & 0xc0))); // C.FLD
      case 2: return encI(0x03, rdp, 2, rs1p, <i32>(((h >> 7) & 0x38) | ((h >> 4) & 4) | ((h << 1) & 0x40))); // C.LW
      case 3: return encI(0x03, rdp, 3, rs1p, <i32>(((h >> 7) & 0x38) | ((h << 1) & 0xc0))); // C.LD
      case 5: return encS(0x27, 3, rs1p, rdp, <i32>(((h >> 7) & 0x38) | ((h << 1) & 0xc0))); // C.FSD
      case 6: return encS(0x23, 2, rs1p, rdp, <i32>(((h >> 7) & 0x38) | ((h >> 4) & 4) | ((h << 1) & 0x40))); // C.SW
      case 7: return encS(0x23, 3, rs1p, rdp, <i32>(((h >> 7) & 0x38) | ((h << 1) & 0xc0))); // C.SD
      default: return 0;
    }
  }
  if (op == 1) {
    switch (f3) {
      case 0: return encI(0x13, rd, 0, rd, imm6); // C.ADDI / C.NOP
      case 1: if (rd == 0) return 0; return encI(0x1b, rd, 0, rd, imm6); // C.ADDIW
      case 2: return encI(0x13, rd, 0, 0, imm6); // C.LI
      case 3: {
        if (rd == 2) { // C.ADDI16SP
          const imm = sext(((h >> 3) & 0x200) | ((h >> 2) & 0x10) | ((h << 1) & 0x40) | ((h << 4) & 0x180) | ((h << 3) & 0x20), 10);
          if (imm == 0) return 0;
          return encI(0x13, 2, 0, 2, imm);
        }
        if (imm6 == 0) return 0; // C.LUI
        return ((<u32>imm6 & 0xfffff) << 12) | (rd << 7) | 0x37;
      }
      case 4: {
        const f2 = (h >> 10) & 3;
        const shamt = ((h >> 7) & 0x20) | ((h >> 2) & 0x1f);
        if (f2 == 0) return encI(0x13, rs1p, 5, rs1p, <i32>shamt); // C.SRLI
        if (f2 == 1) return encI(0x13, rs1p, 5, rs1p, <i32>(shamt | 0x400)); // C.SRAI
        if (f2 == 2) return encI(0x13, rs1p, 7, rs1p, imm6); // C.ANDI
        const f = (h >> 5) & 3;
        if ((h & 0x1000) == 0) {
          if (f == 0) return encR(0x33, rs1p, 0, rs1p, rdp, 0x20); // C.SUB
          if (f == 1) return encR(0x33, rs1p, 4, rs1p, rdp, 0); // C.XOR
          if (f == 2) return encR(0x33, rs1p, 6, rs1p, rdp, 0); // C.OR
          return encR(0x33, rs1p, 7, rs1p, rdp, 0); // C.AND
        }
        if (f == 0) return encR(0x3b, rs1p, 0, rs1p, rdp, 0x20); // C.SUBW
        if (f == 1) return encR(0x3b, rs1p, 0, rs1p, rdp, 0); // C.ADDW
        return 0;
      }
      case 5: { // C.J
        const imm = sext(((h >> 1) & 0x800) | ((h >> 7) & 0x10) | ((h >> 1) & 0x300) | ((h << 2) & 0x400) | ((h >> 1) & 0x40) | ((h << 1) & 0x80) | ((h >> 2) & 0xe) | ((h << 3) & 0x20), 12);
        return encJ(0, imm);
      }
      default: { // C.BEQZ / C.BNEZ
        const imm = sext(((h >> 4) & 0x100) | ((h >> 7) & 0x18) | ((h << 1) & 0xc0) | ((h >> 2) & 6) | ((h << 3) & 0x20), 9);
        return encB(f3 == 6 ? 0 : 1, rs1p, 0, imm);
      }
    }
  }
  if (op == 2) {
    switch (f3) {
      case 0: return encI(0x13, rd, 1, rd, <i32>(((h >> 7) & 0x20) | ((h >> 2) & 0x1f))); // C.SLLI
      case 1: return encI(0x07, rd, 3, 2, <i32>(((h >> 7) & 0x20) | ((h >> 2) & 0x18) | ((h << 4) & 0x1c0))); // C.FLDSP
      case 2: if (rd == 0) return 0; return encI(0x03, rd, 2, 2, <i32>(((h >> 7) & 0x20) | ((h >> 2) & 0x1c) | ((h << 4) & 0xc0))); // C.LWSP
      case 3: if (rd == 0) return 0; return encI(0x03, rd, 3, 2, <i32>(((h >> 7) & 0x20) | ((h >> 2) & 0x18) | ((h << 4) & 0x1c0))); // C.LDSP
      case 4: {
        if ((h & 0x1000) == 0) {
          if (rs2 == 0) { if (rd == 0) return 0; return encI(0x67, 0, 0, rd, 0); } // C.JR
          return encR(0x33, rd, 0, 0, rs2, 0); // C.MV
        }
        if (rs2 == 0) {
          if (rd == 0) return 0x00100073; // C.EBREAK
          return encI(0x67, 1, 0, rd, 0); // C.JALR
        }
        return encR(0x33, rd, 0, rd, rs2, 0); // C.ADD
      }
      case 5: return encS(0x27, 3, 2, rs2, <i32>(((h >> 7) & 0x38) | ((h >> 1) & 0x1c0))); // C.FSDSP
      case 6: return encS(0x23, 2, 2, rs2, <i32>(((h >> 7) & 0x3c) | ((h >> 1) & 0xc0))); // C.SWSP
      default: return encS(0x23, 3, 2, rs2, <i32>(((h >> 7) & 0x38) | ((h >> 1) & 0x1c0))); // C.SDSP
    }
  }
  return 0;
}

/** Cached expansion: 0 = not computed yet, 1 = illegal. */
@inline function expandCached(h: u32): u32 {
  const p = CTAB + (<usize>h << 2);
  let e = load<u32>(p);
  if (e == 0) {
    e = expandC(h);
    if (e == 0) e = 1;
    store<u32>(p, e);
  }
  return e;
}

export function expandCompressed(h: u32): u32 { const e = expandC(h & 0xffff); return e; }

// ─── M extension helpers ──────────────────────────────────────────────────
function mulhu(a: u64, b: u64): u64 {
  const a0 = a & 0xffffffff, a1 = a >>> 32, b0 = b & 0xffffffff, b1 = b >>> 32;
  const p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
  const mid = (p00 >>> 32) + (p01 & 0xffffffff) + (p10 & 0xffffffff);
  return p11 + (p01 >>> 32) + (p10 >>> 32) + (mid >>> 32);
}
function mulh(a: u64, b: u64): u64 {
  let r = mulhu(a, b);
  if (<i64>a < 0) r -= b;
  if (<i64>b < 0) r -= a;
  return r;
}
function mulhsu(a: u64, b: u64): u64 {
  let r = mulhu(a, b);
  if (<i64>a < 0) r -= b;
  return r;
}
function div64(a: u64, b: u64): u64 {
  if (b == 0) return <u64>-1;
  if (a == 0x8000000000000000 && b == <u64>-1) return a;
  return <u64>(<i64>a / <i64>b);
}
function rem64(a: u64, b: u64): u64 {
  if (b == 0) return a;
  if (a == 0x8000000000000000 && b == <u64>-1) return 0;
  return <u64>(<i64>a % <i64>b);
}
function div32(a: u64, b: u64): u64 {
  const x = <i32>a, y = <i32>b;
  if (y == 0) return <u64>-1;
  if (x == i32.MIN_VALUE && y == -1) return sext32(<u64><u32>x);
  return <u64><i64>(x / y);
}
function rem32(a: u64, b: u64): u64 {
  const x = <i32>a, y = <i32>b;
  if (y == 0) return <u64><i64>x;
  if (x == i32.MIN_VALUE && y == -1) return 0;
  return <u64><i64>(x % y);
}
function divu32(a: u64, b: u64): u64 {
  const x = <u32>a, y = <u32>b;
  if (y == 0) return <u64>-1;
  return sext32(<u64>(x / y));
}
function remu32(a: u64, b: u64): u64 {
  const x = <u32>a, y = <u32>b;
  if (y == 0) return sext32(<u64>x);
  return sext32(<u64>(x % y));
}

// ─── CSRs (privileged 1.12 §2, §3.1, §4.1) ────────────────────────────────
let csrBad: bool = false;

function counterAllowed(idx: u32): bool {
  if (priv < 3 && ((mcounteren >> idx) & 1) == 0) return false;
  if (priv == 0 && ((scounteren >> idx) & 1) == 0) return false;
  return true;
}

function curInstret(): u64 { return instret + <u64>(batchN - batchLeft); }

function readMstatus(): u64 {
  let v = mstatus | MS_UXL_SXL;
  if ((mstatus & MS_FS) == MS_FS) v |= MS_SD;
  return v;
}

/** Read a CSR (access rights already checked by the caller). Sets csrBad for a CSR that does not exist. */
function csrRead(n: u32): u64 {
  csrBad = false;
  switch (n) {
    case 0x001: if ((mstatus & MS_FS) == 0) break; return <u64>fflags;
    case 0x002: if ((mstatus & MS_FS) == 0) break; return <u64>frm;
    case 0x003: if ((mstatus & MS_FS) == 0) break; return <u64>((frm << 5) | fflags);
    case 0xc00: if (!counterAllowed(0)) break; return curInstret() + cycleDelta;
    case 0xc01: if (!counterAllowed(1)) break; return hostTime();
    case 0xc02: if (!counterAllowed(2)) break; return curInstret();
    case 0x100: return readMstatus() & SSTATUS_RMASK;
    case 0x104: return mie & mideleg;
    case 0x105: return stvec;
    case 0x106: return scounteren;
    case 0x10a: return senvcfg;
    case 0x140: return sscratch;
    case 0x141: return sepc;
    case 0x142: return scause;
    case 0x143: return stval;
    case 0x144: return (mipSw | mipExt) & mideleg;
    case 0x180: if (priv == 1 && (mstatus & MS_TVM) != 0) break; return satp;
    case 0x300: return readMstatus();
    case 0x301: return MISA;
    case 0x302: return medeleg;
    case 0x303: return mideleg;
    case 0x304: return mie;
    case 0x305: return mtvec;
    case 0x306: return mcounteren;
    case 0x30a: return menvcfg;
    case 0x320: return mcountinhibit;
    case 0x340: return mscratch;
    case 0x341: return mepc;
    case 0x342: return mcause;
    case 0x343: return mtval;
    case 0x344: return mipSw | mipExt;
    case 0x3a0: return pmpcfg0;
    case 0x3a2: return pmpcfg2;
    case 0xb00: return curInstret() + cycleDelta;
    case 0xb02: return curInstret();
    case 0xf11: case 0xf12: case 0xf13: case 0xf15: return 0;
    case 0xf14: return hartId;
    default: {
      // pmpcfg4..14 (even) and pmpaddr16..63: unimplemented entries read as zero (§3.7.1).
      if (n >= 0x3a4 && n <= 0x3ae && (n & 1) == 0) return 0;
      if (n >= 0x3b0 && n <= 0x3bf) return load<u64>(base + PMPADDR_OFF + ((<usize>(n - 0x3b0)) << 3));
      if (n >= 0x3c0 && n <= 0x3ef) return 0;
      // hpmcounter3..31, mhpmcounter3..31, mhpmevent3..31: hardwired zero.
      if (n >= 0xc03 && n <= 0xc1f) { if (!counterAllowed(n - 0xc00)) break; return 0; }
      if (n >= 0xb03 && n <= 0xb1f) return 0;
      if (n >= 0x323 && n <= 0x33f) return 0;
    }
  }
  csrBad = true;
  return 0;
}

function csrWrite(n: u32, v: u64): void {
  csrBad = false;
  switch (n) {
    case 0x001: if ((mstatus & MS_FS) == 0) break; fflags = <u32>v & 31; mstatus |= MS_FS; return;
    case 0x002: if ((mstatus & MS_FS) == 0) break; frm = <u32>v & 7; mstatus |= MS_FS; return;
    case 0x003: if ((mstatus & MS_FS) == 0) break; fflags = <u32>v & 31; frm = (<u32>v >> 5) & 7; mstatus |= MS_FS; return;
    case 0x100: mstatus = (mstatus & ~SSTATUS_WMASK) | (v & SSTATUS_WMASK); updateKeys(); return;
    case 0x104: mie = (mie & ~mideleg) | (v & mideleg & MIE_MASK); return;
    case 0x105: stvec = (v & 3) >= 2 ? v & ~3 : v; return;
    case 0x106: scounteren = v & 0xffffffff; return;
    case 0x10a: senvcfg = v & 1; return;
    case 0x140: sscratch = v; return;
    case 0x141: sepc = v & ~1; return;
    case 0x142: scause = v; return;
    case 0x143: stval = v; return;
    case 0x144: mipSw = (mipSw & ~(mideleg & IP_SSI)) | (v & mideleg & IP_SSI); return;
    case 0x180: {
      if (priv == 1 && (mstatus & MS_TVM) != 0) break;
      const m = v >>> 60;
      // WARL: unsupported modes leave satp unchanged (§4.1.11); no ASID bits are implemented.
      if (m == 0 || m == 8 || m == 9) { satp = (m << 60) | (v & PPN_MASK); flushTlb(); }
      return;
    }
    case 0x300: {
      let nv = (mstatus & ~MSTATUS_WMASK) | (v & MSTATUS_WMASK);
      if (((nv >> 11) & 3) == 2) nv &= ~MS_MPP; // MPP is WARL: no H-mode
      mstatus = nv;
      updateKeys();
      return;
    }
    case 0x301: return; // misa is read-only here (WARL)
    case 0x302: medeleg = v & MEDELEG_MASK; return;
    case 0x303: mideleg = v & MIDELEG_MASK; return;
    case 0x304: mie = v & MIE_MASK; return;
    case 0x305: mtvec = (v & 3) >= 2 ? v & ~3 : v; return;
    case 0x306: mcounteren = v & 0xffffffff; return;
    case 0x30a: menvcfg = v & 1; return;
    case 0x320: mcountinhibit = v & 5; return;
    case 0x340: mscratch = v; return;
    case 0x341: mepc = v & ~1; return;
    case 0x342: mcause = v; return;
    case 0x343: mtval = v; return;
    case 0x344: mipSw = (mipSw & ~MIP_WMASK) | (v & MIP_WMASK); return;
    case 0x3a0: pmpcfg0 = v; return;
    case 0x3a2: pmpcfg2 = v; return;
    case 0xb00: cycleDelta = v - curInstret(); return;
    case 0xb02: { const c = curInstret() + cycleDelta; instret = v - <u64>(batchN - batchLeft); cycleDelta = c - curInstret(); return; }
    default: {
      if (n >= 0x3a4 && n <= 0x3ae && (n & 1) == 0) return;
      if (n >= 0x3b0 && n <= 0x3bf) { store<u64>(base + PMPADDR_OFF + ((<usize>(n - 0x3b0)) << 3), v & 0x3fffffffffffff); return; }
      if (n >= 0x3c0 && n <= 0x3ef) return;
      if (n >= 0xb03 && n <= 0xb1f) return;
      if (n >= 0x323 && n <= 0x33f) return;
    }
  }
  csrBad = true;
}

// ─── traps (§3.1.6.1, §3.1.9, §3.3.1) ─────────────────────────────────────
function trapTo(cause: u64, tval: u64, intr: bool): void {
  const bit = cause & 63;
  const deleg = priv <= 1 && (((intr ? mideleg : medeleg) >> bit) & 1) != 0;
  const c = intr ? (cause | (<u64>1 << 63)) : cause;
  if (deleg) {
    sepc = pc; scause = c; stval = tval;
    let s = mstatus & ~(MS_SPIE | MS_SIE | MS_SPP);
    if (mstatus & MS_SIE) s |= MS_SPIE;
    if (priv == 1) s |= MS_SPP;
    mstatus = s;
    priv = 1;
    pc = (stvec & ~3) + ((stvec & 1) != 0 && intr ? cause << 2 : 0);
  } else {
    mepc = pc; mcause = c; mtval = tval;
    let s = mstatus & ~(MS_MPIE | MS_MIE | MS_MPP);
    if (mstatus & MS_MIE) s |= MS_MPIE;
    s |= <u64>priv << 11;
    mstatus = s;
    priv = 3;
    pc = (mtvec & ~3) + ((mtvec & 1) != 0 && intr ? cause << 2 : 0);
  }
  updateKeys();
}

/** Would this trap go to M-mode? */
@inline function goesToM(cause: u64, intr: bool): bool {
  return priv == 3 || (((intr ? mideleg : medeleg) >> (cause & 63)) & 1) == 0;
}

/** The highest-priority pending and enabled interrupt, or -1 (§3.1.9). */
function pendingInterrupt(): i32 {
  const pend = (mipSw | mipExt) & mie;
  if (pend == 0) return -1;
  const mEnabled = priv < 3 || (mstatus & MS_MIE) != 0;
  const sEnabled = priv < 1 || (priv == 1 && (mstatus & MS_SIE) != 0);
  let cand: u64 = 0;
  const m = pend & ~mideleg;
  if (m != 0 && mEnabled) cand = m;
  else {
    const s = pend & mideleg;
    if (s != 0 && sEnabled) cand = s;
  }
  if (cand == 0) return -1;
  if (cand & IP_MEI) return 11;
  if (cand & IP_MSI) return 3;
  if (cand & IP_MTI) return 7;
  if (cand & IP_SEI) return 9;
  if (cand & IP_SSI) return 1;
  if (cand & IP_STI) return 5;
  return -1;
}

/** Take a pending interrupt if any. Returns true if the batch must exit. */
function takeInterrupt(): bool {
  const c = pendingInterrupt();
  if (c < 0) return false;
  if (mode == MODE_BUILTIN && goesToM(<u64>c, true)) {
    exitReason = EXIT_TRAP; exitCause = <u64>c | (<u64>1 << 63); exitTval = 0;
    return true;
  }
  trapTo(<u64>c, 0, true);
  return false;
}

/** Deliver the exception in ev. Returns true if the batch must exit. */
function deliverException(): bool {
  const cause = <u64>ev;
  const tval = evTval;
  ev = EV_NONE;
  if (mode == MODE_SNIPPET) {
    exitReason = (cause == 8 || cause == 9 || cause == 11) ? EXIT_ECALL : EXIT_TRAP;
    exitCause = cause; exitTval = tval;
    return true;
  }
  if (mode == MODE_BUILTIN) {
    if (cause == 9) { exitReason = EXIT_ECALL; exitCause = cause; exitTval = 0; return true; }
    if (goesToM(cause, false)) { exitReason = EXIT_TRAP; exitCause = cause; exitTval = tval; return true; }
  }
  trapTo(cause, tval, false);
  return false;
}

// ─── floating point ───────────────────────────────────────────────────────
@inline function fpOn(): bool { return (mstatus & MS_FS) != 0; }
function rmOf(insn: u32): i32 {
  let rm = (insn >> 12) & 7;
  if (rm == 7) rm = frm;
  return rm > 4 ? -1 : <i32>rm;
}
@inline function accrue(): void {
  if (fpu.fflags != 0) { fflags |= fpu.fflags; fpu.fflags = 0; mstatus |= MS_FS; }
}

/** OP-FP (0x53). Returns false for an illegal encoding. */
function execOpFp(insn: u32): bool {
  const rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31;
  const f3 = (insn >> 12) & 7;
  const f7 = insn >> 25;
  const dbl = (f7 & 1) != 0;
  if ((f7 & 2) != 0) return false; // fmt 2/3 (H, Q) not implemented
  switch (f7 >> 2) {
    case 0x00: case 0x01: case 0x02: case 0x03: { // FADD FSUB FMUL FDIV
      const rm = rmOf(insn); if (rm < 0) return false;
      const k = f7 >> 2;
      if (dbl) {
        const a = F(rs1), b = F(rs2);
        const r = k == 0 ? fpu.f64_add(a, b, rm) : k == 1 ? fpu.f64_sub(a, b, rm) : k == 2 ? fpu.f64_mul(a, b, rm) : fpu.f64_div(a, b, rm);
        setF(rd, r);
      } else {
        const a = F32(rs1), b = F32(rs2);
        const r = k == 0 ? fpu.f32_add(a, b, rm) : k == 1 ? fpu.f32_sub(a, b, rm) : k == 2 ? fpu.f32_mul(a, b, rm) : fpu.f32_div(a, b, rm);
        setF32(rd, r);
      }
      accrue();
      return true;
    }
    case 0x0b: { // FSQRT
      if (rs2 != 0) return false;
      const rm = rmOf(insn); if (rm < 0) return false;
      if (dbl) setF(rd, fpu.f64_sqrt(F(rs1), rm)); else setF32(rd, fpu.f32_sqrt(F32(rs1), rm));
      accrue();
      return true;
    }
    case 0x04: { // FSGNJ / FSGNJN / FSGNJX
      if (f3 > 2) return false;
      if (dbl) {
        const a = F(rs1), b = F(rs2);
        const sb = f3 == 0 ? b : f3 == 1 ? ~b : (a ^ b);
        setF(rd, (a & 0x7fffffffffffffff) | (sb & 0x8000000000000000));
      } else {
        const a = F32(rs1), b = F32(rs2);
        const sb = f3 == 0 ? b : f3 == 1 ? ~b : (a ^ b);
        setF32(rd, (a & 0x7fffffff) | (sb & 0x80000000));
      }
      return true;
    }
    case 0x05: { // FMIN / FMAX
      if (f3 > 1) return false;
      if (dbl) setF(rd, f3 == 0 ? fpu.f64_min(F(rs1), F(rs2)) : fpu.f64_max(F(rs1), F(rs2)));
      else setF32(rd, f3 == 0 ? fpu.f32_min(F32(rs1), F32(rs2)) : fpu.f32_max(F32(rs1), F32(rs2)));
      accrue();
      return true;
    }
    case 0x08: { // FCVT.S.D (f7=0x20, rs2=1) / FCVT.D.S (f7=0x21, rs2=0)
      const rm = rmOf(insn); if (rm < 0) return false;
      if (dbl) { if (rs2 != 0) return false; setF(rd, fpu.f32_to_f64(F32(rs1))); }
      else { if (rs2 != 1) return false; setF32(rd, fpu.f64_to_f32(F(rs1), rm)); }
      accrue();
      return true;
    }
    case 0x14: { // FLE FLT FEQ
      let r: bool;
      if (f3 == 0) r = dbl ? fpu.f64_le(F(rs1), F(rs2)) : fpu.f32_le(F32(rs1), F32(rs2));
      else if (f3 == 1) r = dbl ? fpu.f64_lt(F(rs1), F(rs2)) : fpu.f32_lt(F32(rs1), F32(rs2));
      else if (f3 == 2) r = dbl ? fpu.f64_eq(F(rs1), F(rs2)) : fpu.f32_eq(F32(rs1), F32(rs2));
      else return false;
      setX(rd, r ? 1 : 0);
      accrue();
      return true;
    }
    case 0x18: { // FCVT.{W,WU,L,LU}.{S,D}
      const rm = rmOf(insn); if (rm < 0) return false;
      let r: u64;
      if (dbl) {
        const a = F(rs1);
        if (rs2 == 0) r = <u64><i64>fpu.f64_to_i32(a, rm);
        else if (rs2 == 1) r = sext32(<u64>fpu.f64_to_u32(a, rm));
        else if (rs2 == 2) r = <u64>fpu.f64_to_i64(a, rm);
        else if (rs2 == 3) r = fpu.f64_to_u64(a, rm);
        else return false;
      } else {
        const a = F32(rs1);
        if (rs2 == 0) r = <u64><i64>fpu.f32_to_i32(a, rm);
        else if (rs2 == 1) r = sext32(<u64>fpu.f32_to_u32(a, rm));
        else if (rs2 == 2) r = <u64>fpu.f32_to_i64(a, rm);
        else if (rs2 == 3) r = fpu.f32_to_u64(a, rm);
        else return false;
      }
      setX(rd, r);
      accrue();
      return true;
    }
    case 0x1a: { // FCVT.{S,D}.{W,WU,L,LU}
      const rm = rmOf(insn); if (rm < 0) return false;
      const a = X(rs1);
      if (dbl) {
        let r: u64;
        if (rs2 == 0) r = fpu.i32_to_f64(<i32>a, rm);
        else if (rs2 == 1) r = fpu.u32_to_f64(<u32>a, rm);
        else if (rs2 == 2) r = fpu.i64_to_f64(<i64>a, rm);
        else if (rs2 == 3) r = fpu.u64_to_f64(a, rm);
        else return false;
        setF(rd, r);
      } else {
        let r: u32;
        if (rs2 == 0) r = fpu.i32_to_f32(<i32>a, rm);
        else if (rs2 == 1) r = fpu.u32_to_f32(<u32>a, rm);
        else if (rs2 == 2) r = fpu.i64_to_f32(<i64>a, rm);
        else if (rs2 == 3) r = fpu.u64_to_f32(a, rm);
        else return false;
        setF32(rd, r);
      }
      accrue();
      return true;
    }
    case 0x1c: { // FMV.X.{W,D} / FCLASS
      if (rs2 != 0) return false;
      if (f3 == 0) { setX(rd, dbl ? F(rs1) : sext32(F(rs1) & 0xffffffff)); return true; }
      if (f3 == 1) { setX(rd, <u64>(dbl ? fpu.f64_classify(F(rs1)) : fpu.f32_classify(F32(rs1)))); return true; }
      return false;
    }
    case 0x1e: { // FMV.{W,D}.X
      if (rs2 != 0 || f3 != 0) return false;
      if (dbl) setF(rd, X(rs1)); else setF32(rd, <u32>X(rs1));
      return true;
    }
  }
  return false;
}

function execFma(insn: u32, op: u32): bool {
  const rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31, rs3 = insn >> 27;
  const fmt = (insn >> 25) & 3;
  if (fmt > 1) return false;
  const rm = rmOf(insn); if (rm < 0) return false;
  // FMADD: a*b+c; FMSUB: a*b-c; FNMSUB: -(a*b)+c; FNMADD: -(a*b)-c (ISA §11.6).
  const negP = op == 0x4b || op == 0x4f;
  const negA = op == 0x47 || op == 0x4f;
  if (fmt == 1) setF(rd, fpu.f64_fma(F(rs1), F(rs2), F(rs3), rm, negP, negA));
  else setF32(rd, fpu.f32_fma(F32(rs1), F32(rs2), F32(rs3), rm, negP, negA));
  accrue();
  return true;
}

// ─── cold instructions, out of run() so that the hot loop stays small ─────
/**
 * F/D loads, stores and arithmetic (ISA §11–12): illegal while mstatus.FS is
 * Off (privileged 1.12 §3.1.6.6). `raw` is the instruction as fetched (the
 * 16-bit form of a compressed one), the tval of an illegal-instruction trap.
 */
function execFp(insn: u32, raw: u32): void {
  const op = insn & 0x7f;
  const rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, f3 = (insn >> 12) & 7;
  if (!fpOn()) { raise(2, <u64>raw); return; }
  if (op == OPC_LOAD_FP || op == OPC_STORE_FP) {
    if (f3 != 2 && f3 != 3) { raise(2, <u64>raw); return; }
    if (op == OPC_LOAD_FP) {
      const va = X(rs1) + <u64><i64>(<i32>insn >> 20);
      if (f3 == 2) { const v = loadN(va, 4); if (ev == EV_NONE) setF32(rd, <u32>v); }
      else { const v = loadN(va, 8); if (ev == EV_NONE) setF(rd, v); }
    } else {
      const imm = ((<i32>insn >> 25) << 5) | <i32>((insn >> 7) & 0x1f);
      storeN(X(rs1) + <u64><i64>imm, f3 == 2 ? 4 : 8, F((insn >> 20) & 31));
    }
    return;
  }
  if (!(op == OPC_OP_FP ? execOpFp(insn) : execFma(insn, op))) raise(2, <u64>raw);
}

/** AMO (ISA §8): LR/SC and the read-modify-write AMOs. Raises its own exceptions (no compressed form). */
function execAmo(insn: u32): void {
  const rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, rs2 = (insn >> 20) & 31, f3 = (insn >> 12) & 7;
  const f5 = insn >> 27;
  if (f3 != 2 && f3 != 3) { raise(2, <u64>insn); return; }
  const w = f3 == 2;
  const size = w ? 4 : 8;
  const va = X(rs1);
  if (f5 == 0x02) { // LR
    if (rs2 != 0) { raise(2, <u64>insn); return; }
    const h = amoHost(va, size, ACC_LOAD);
    if (ev != EV_NONE) return;
    const v = w ? sext32(<u64>atomic.load<u32>(h)) : atomic.load<u64>(h);
    resAddr = h; resVal = v; resValid = true;
    setX(rd, v);
    return;
  }
  const h = amoHost(va, size, ACC_STORE);
  if (ev != EV_NONE) return;
  const b = X(rs2);
  if (f5 == 0x03) { // SC: compare-exchange against the value LR saw
    let ok = false;
    if (resValid && resAddr == h) {
      if (w) ok = atomic.cmpxchg<u32>(h, <u32>resVal, <u32>b) == <u32>resVal;
      else ok = atomic.cmpxchg<u64>(h, resVal, b) == resVal;
    }
    resValid = false;
    setX(rd, ok ? 0 : 1);
    return;
  }
  let old: u64;
  if (w) {
    const bb = <u32>b;
    let o: u32;
    switch (f5) {
      case 0x01: o = atomic.xchg<u32>(h, bb); break;
      case 0x00: o = atomic.add<u32>(h, bb); break;
      case 0x04: o = atomic.xor<u32>(h, bb); break;
      case 0x0c: o = atomic.and<u32>(h, bb); break;
      case 0x08: o = atomic.or<u32>(h, bb); break;
      case 0x10: case 0x14: case 0x18: case 0x1c: {
        while (true) {
          o = atomic.load<u32>(h);
          let nv: u32;
          if (f5 == 0x10) nv = <i32>o < <i32>bb ? o : bb;
          else if (f5 == 0x14) nv = <i32>o > <i32>bb ? o : bb;
          else if (f5 == 0x18) nv = o < bb ? o : bb;
          else nv = o > bb ? o : bb;
          if (atomic.cmpxchg<u32>(h, o, nv) == o) break;
        }
        break;
      }
      default: { raise(2, <u64>insn); return; }
    }
    old = sext32(<u64>o);
  } else {
    switch (f5) {
      case 0x01: old = atomic.xchg<u64>(h, b); break;
      case 0x00: old = atomic.add<u64>(h, b); break;
      case 0x04: old = atomic.xor<u64>(h, b); break;
      case 0x0c: old = atomic.and<u64>(h, b); break;
      case 0x08: old = atomic.or<u64>(h, b); break;
      case 0x10: case 0x14: case 0x18: case 0x1c: {
        while (true) {
          old = atomic.load<u64>(h);
          let nv: u64;
          if (f5 == 0x10) nv = <i64>old < <i64>b ? old : b;
          else if (f5 == 0x14) nv = <i64>old > <i64>b ? old : b;
          else if (f5 == 0x18) nv = old < b ? old : b;
          else nv = old > b ? old : b;
          if (atomic.cmpxchg<u64>(h, old, nv) == old) break;
        }
        break;
      }
      default: { raise(2, <u64>insn); return; }
    }
  }
  setX(rd, old);
}

/**
 * SYSTEM: ECALL, EBREAK, xRET, WFI, SFENCE.VMA and Zicsr. pc is still the
 * instruction's address; returns the next pc. Raises its own exceptions
 * (its only compressed form, C.EBREAK, is never illegal); ev = EV_IRQ after
 * anything that may unmask an interrupt, EV_WFI to sleep.
 */
function execSystem(insn: u32, npc: u64): u64 {
  const rd = (insn >> 7) & 31, rs1 = (insn >> 15) & 31, f3 = (insn >> 12) & 7;
  if (f3 == 0) {
    if (insn == 0x00000073) { raise(priv == 0 ? 8 : priv == 1 ? 9 : 11, 0); return npc; } // ECALL
    if (insn == 0x00100073) { raise(3, pc); return npc; } // EBREAK
    if (insn == 0x10200073) { // SRET
      if (priv == 0 || (priv == 1 && (mstatus & MS_TSR) != 0)) { raise(2, <u64>insn); return npc; }
      const np = <u32>((mstatus >> 8) & 1);
      let s = mstatus & ~(MS_SIE | MS_SPP);
      if (mstatus & MS_SPIE) s |= MS_SIE;
      s |= MS_SPIE;
      if (np != 3) s &= ~MS_MPRV;
      mstatus = s; priv = np;
      resValid = false;
      updateKeys();
      ev = EV_IRQ;
      return sepc;
    }
    if (insn == 0x30200073) { // MRET
      if (priv != 3) { raise(2, <u64>insn); return npc; }
      const np = <u32>((mstatus >> 11) & 3);
      let s = mstatus & ~(MS_MIE | MS_MPP);
      if (mstatus & MS_MPIE) s |= MS_MIE;
      s |= MS_MPIE;
      if (np != 3) s &= ~MS_MPRV;
      mstatus = s; priv = np;
      resValid = false;
      updateKeys();
      ev = EV_IRQ;
      return mepc;
    }
    if (insn == 0x10500073) { // WFI (§3.3.3)
      if (priv == 0 || (priv == 1 && (mstatus & MS_TW) != 0)) { raise(2, <u64>insn); return npc; }
      if (mode != MODE_SNIPPET && ((mipSw | mipExt) & mie) == 0) ev = EV_WFI;
      return npc;
    }
    if ((insn >> 25) == 0x09 && rd == 0) { // SFENCE.VMA
      if (priv == 0 || (priv == 1 && (mstatus & MS_TVM) != 0)) { raise(2, <u64>insn); return npc; }
      flushTlb();
      return npc;
    }
    raise(2, <u64>insn);
    return npc;
  }
  if (f3 == 4) { raise(2, <u64>insn); return npc; }
  // Zicsr (ISA §9): access checks per privileged 1.12 §2.1.
  const csr = insn >> 20;
  const isW = (f3 & 3) == 1;
  const writes = isW || rs1 != 0;
  if (priv < ((csr >> 8) & 3) || (writes && (csr >> 10) == 3)) { raise(2, <u64>insn); return npc; }
  const old = csrRead(csr);
  if (csrBad) { raise(2, <u64>insn); return npc; }
  if (writes) {
    const src = f3 >= 5 ? <u64>rs1 : X(rs1);
    const op = f3 & 3;
    // CSRRS/CSRRC on mip modify the software-writable bits only: the
    // external SEIP (and, with the builtin SBI, STIP) lines must not be
    // latched into them (privileged 1.12 §3.1.9).
    const base = csr == 0x344 ? (old & ~MIP_WMASK) | (mipSw & MIP_WMASK) : old;
    const nv = op == 1 ? src : op == 2 ? base | src : base & ~src;
    csrWrite(csr, nv);
    if (csrBad) { raise(2, <u64>insn); return npc; }
    ev = EV_IRQ;
  }
  setX(rd, old);
  return npc;
}

// ─── the interpreter loop ─────────────────────────────────────────────────
/** Run up to n instructions. Returns EXIT_*. */
export function run(n: i32): i32 {
  exitReason = EXIT_LIMIT;
  batchN = n;
  let left = n;
  const xr = xb;
  // Block boundary: the translator's lookup is probed only here — at the start, after a taken
  // branch or jump, a new fetch page (traps, xRET, FENCE.I, SFENCE.VMA and satp writes reset it),
  // a return from translated code, or an instruction a region stops at (CSR, AMO, FP) — not at
  // every interpreted instruction.
  let jp = true;
  store<i32>(base + WHERE, WHERE_INTERP);
  if (mode != MODE_SNIPPET && takeInterrupt()) { batchLeft = left; store<i32>(base + WHERE, WHERE_HOST); return exitReason; }
  while (left > 0) {
    // ── fetch ──
    let insn: u32;
    let ilen: u64 = 4;
    const cur = pc;
    if ((cur & ~0xfff) == fetchPage && (cur & 0xfff) <= 0xffc) {
      insn = load<u32>(<usize>(cur + fetchDelta));
    } else {
      insn = fetchSlow(cur);
      if (ev != EV_NONE) { left--; batchLeft = left; if (deliverException()) break; continue; }
      jp = true;
    }
    if (jp) {
      jp = false;
      if (jitOn) {
        // Translated code, looked up by the physical (host) address of pc (see jitEnter).
        const r = jitEnter(left);
        if (r != left) {
          jitRetired += <u64>(left - r);
          left = r;
          pc = load<u64>(base + JIT_PC);
          jp = true;
          if (ev != EV_NONE) {
            batchLeft = left;
            if (ev < 64) { if (deliverException()) break; continue; }
            // EV_IRQ: a CSR write in the block (jitCold) may have unmasked an interrupt.
            ev = EV_NONE;
            if (mode != MODE_SNIPPET && takeInterrupt()) break;
          }
          continue;
        }
      }
    }
    left--;
    const raw = insn;
    if ((insn & 3) != 3) {
      ilen = 2;
      insn = expandCached(insn & 0xffff);
      if (insn == 1) { raise(2, <u64>(raw & 0xffff)); batchLeft = left; if (deliverException()) break; continue; }
    }
    let npc = cur + ilen;
    let ill = false;
    const rd = (insn >> 7) & 31;
    const rs1 = (insn >> 15) & 31;
    const rs2 = (insn >> 20) & 31;
    const f3 = (insn >> 12) & 7;
    // A sparse switch: the compiler emits a chain of compares in source order,
    // not a br_table, so the commonest opcodes come first.
    // Measured: a dense br_table on insn[6:2] made the boot ~7% faster but a
    // U-mode shell loop ~30% slower (one indirect jump for every instruction
    // predicts worse than the compare chain), so the chain stays.
    switch (insn & 0x7f) {
      case OPC_OP_IMM: {
        const a = XR(xr, rs1);
        const imm = <u64><i64>(<i32>insn >> 20);
        let r: u64;
        switch (f3) {
          case 0: r = a + imm; break;
          case 1: if ((insn >> 26) != 0) { ill = true; r = 0; break; } r = a << (imm & 63); break;
          case 2: r = <i64>a < <i64>imm ? 1 : 0; break;
          case 3: r = a < imm ? 1 : 0; break;
          case 4: r = a ^ imm; break;
          case 5: {
            const hi = insn >> 26;
            if (hi == 0) r = a >>> (imm & 63);
            else if (hi == 0x10) r = <u64>(<i64>a >> <i64>(imm & 63));
            else { ill = true; r = 0; }
            break;
          }
          case 6: r = a | imm; break;
          default: r = a & imm;
        }
        if (!ill) setXR(xr, rd, r);
        break;
      }
      case OPC_LOAD: { // LOAD: one TLB probe, then the width/extension by funct3
        if (f3 == 7) { ill = true; break; }
        const va = XR(xr, rs1) + <u64><i64>(<i32>insn >> 20);
        const size = 1 << (f3 & 3);
        const h = tlbHost(ACC_LOAD, va, <u64>size);
        let v: u64;
        if (h != 0) {
          switch (f3) {
            case 0: v = <u64><i64>load<i8>(h); break;
            case 1: v = <u64><i64>load<i16>(h); break;
            case 2: v = <u64><i64>load<i32>(h); break;
            case 3: v = load<u64>(h); break;
            case 4: v = <u64>load<u8>(h); break;
            case 5: v = <u64>load<u16>(h); break;
            default: v = <u64>load<u32>(h);
          }
        } else {
          v = loadSlow(va, size);
          if (ev != EV_NONE) break;
          if (f3 < 3) v = f3 == 0 ? <u64><i64><i8>v : f3 == 1 ? <u64><i64><i16>v : <u64><i64><i32>v;
        }
        setXR(xr, rd, v);
        break;
      }
      case OPC_BRANCH: {
        const a = XR(xr, rs1), b = XR(xr, rs2);
        let take: bool;
        switch (f3) {
          case 0: take = a == b; break;
          case 1: take = a != b; break;
          case 4: take = <i64>a < <i64>b; break;
          case 5: take = <i64>a >= <i64>b; break;
          case 6: take = a < b; break;
          case 7: take = a >= b; break;
          default: { ill = true; take = false; }
        }
        if (take) {
          jp = true;
          const imm = ((<i32>insn >> 31) << 12) | <i32>(((insn >> 7) & 1) << 11) | <i32>(((insn >> 25) & 0x3f) << 5) | <i32>(((insn >> 8) & 0xf) << 1);
          npc = cur + <u64><i64>imm;
        }
        break;
      }
      case OPC_STORE: {
        const imm = ((<i32>insn >> 25) << 5) | <i32>((insn >> 7) & 0x1f);
        const va = XR(xr, rs1) + <u64><i64>imm;
        if (f3 > 3) { ill = true; break; }
        storeN(va, 1 << f3, XR(xr, rs2));
        break;
      }
      case OPC_OP: {
        const a = XR(xr, rs1), b = XR(xr, rs2);
        const f7 = insn >> 25;
        let r: u64 = 0;
        if (f7 == 0) {
          switch (f3) {
            case 0: r = a + b; break;
            case 1: r = a << (b & 63); break;
            case 2: r = <i64>a < <i64>b ? 1 : 0; break;
            case 3: r = a < b ? 1 : 0; break;
            case 4: r = a ^ b; break;
            case 5: r = a >>> (b & 63); break;
            case 6: r = a | b; break;
            default: r = a & b;
          }
        } else if (f7 == 0x20) {
          if (f3 == 0) r = a - b;
          else if (f3 == 5) r = <u64>(<i64>a >> <i64>(b & 63));
          else { ill = true; break; }
        } else if (f7 == 1) {
          switch (f3) {
            case 0: r = a * b; break;
            case 1: r = mulh(a, b); break;
            case 2: r = mulhsu(a, b); break;
            case 3: r = mulhu(a, b); break;
            case 4: r = div64(a, b); break;
            case 5: r = b == 0 ? <u64>-1 : a / b; break;
            case 6: r = rem64(a, b); break;
            default: r = b == 0 ? a : a % b;
          }
        } else { ill = true; break; }
        setXR(xr, rd, r);
        break;
      }
      case OPC_JAL: {
        const imm = ((<i32>insn >> 31) << 20) | <i32>(((insn >> 12) & 0xff) << 12) | <i32>(((insn >> 20) & 1) << 11) | <i32>(((insn >> 21) & 0x3ff) << 1);
        setXR(xr, rd, npc);
        npc = cur + <u64><i64>imm;
        jp = true;
        break;
      }
      case OPC_JALR: {
        if (f3 != 0) { ill = true; break; }
        const t = (XR(xr, rs1) + <u64><i64>(<i32>insn >> 20)) & ~1;
        setXR(xr, rd, npc);
        npc = t;
        jp = true;
        break;
      }
      case OPC_AUIPC: setXR(xr, rd, cur + <u64><i64><i32>(insn & 0xfffff000)); break;
      case OPC_LUI: setXR(xr, rd, <u64><i64><i32>(insn & 0xfffff000)); break;
      case OPC_OP_IMM_32: {
        const a = <u32>XR(xr, rs1);
        let r: u32 = 0;
        if (f3 == 0) r = a + <u32>(<i32>insn >> 20);
        else if (f3 == 1 && (insn >> 25) == 0) r = a << rs2;
        else if (f3 == 5 && (insn >> 25) == 0) r = a >>> rs2;
        else if (f3 == 5 && (insn >> 25) == 0x20) r = <u32>(<i32>a >> <i32>rs2);
        else { ill = true; break; }
        setXR(xr, rd, sext32(<u64>r));
        break;
      }
      case OPC_OP_32: {
        const a = XR(xr, rs1), b = XR(xr, rs2);
        const f7 = insn >> 25;
        let r: u64 = 0;
        if (f7 == 0) {
          if (f3 == 0) r = sext32(<u64>(<u32>a + <u32>b));
          else if (f3 == 1) r = sext32(<u64>(<u32>a << (<u32>b & 31)));
          else if (f3 == 5) r = sext32(<u64>(<u32>a >>> (<u32>b & 31)));
          else { ill = true; break; }
        } else if (f7 == 0x20) {
          if (f3 == 0) r = sext32(<u64>(<u32>a - <u32>b));
          else if (f3 == 5) r = <u64><i64>(<i32>a >> (<i32>b & 31));
          else { ill = true; break; }
        } else if (f7 == 1) {
          switch (f3) {
            case 0: r = sext32(<u64>(<u32>a * <u32>b)); break;
            case 4: r = div32(a, b); break;
            case 5: r = divu32(a, b); break;
            case 6: r = rem32(a, b); break;
            case 7: r = remu32(a, b); break;
            default: { ill = true; r = 0; }
          }
          if (ill) break;
        } else { ill = true; break; }
        setXR(xr, rd, r);
        break;
      }
      case OPC_MISC_MEM: { // MISC-MEM: FENCE, FENCE.I (Zifencei: no decoded-instruction cache to drop beyond the fetch page)
        if (f3 == 1) { fetchPage = 1; if (jitOn) { jitFences++; jitFlush(); } }
        else if (f3 != 0) ill = true;
        break;
      }
      case OPC_AMO: execAmo(insn); jp = true; break; // cold: out of line
      case OPC_SYSTEM: batchLeft = left; npc = execSystem(insn, npc); jp = true; break; // cold: out of line
      case OPC_LOAD_FP: case OPC_STORE_FP: case OPC_MADD: case OPC_MSUB: case OPC_NMSUB: case OPC_NMADD: case OPC_OP_FP:
        execFp(insn, ilen == 2 ? raw & 0xffff : raw); // cold: out of line, shared with translated blocks (jitCold)
        jp = true;
        break;
      default: ill = true;
    }
    if (ill) raise(2, <u64>(ilen == 2 ? raw & 0xffff : raw));
    if (ev != EV_NONE) {
      batchLeft = left;
      if (ev < 64) {
        if (deliverException()) break;
        continue;
      }
      const e = ev;
      ev = EV_NONE;
      pc = npc;
      if (e == EV_WFI) { exitReason = EXIT_WFI; break; }
      // EV_IRQ: something that may unmask an interrupt changed.
      if (mode != MODE_SNIPPET && takeInterrupt()) break;
      continue;
    }
    pc = npc;
  }
  batchLeft = left;
  instret += <u64>(n - left);
  batchN = 0; batchLeft = 0;
  store<i32>(base + WHERE, WHERE_HOST);
  return exitReason;
}

// ─── host-facing exports ──────────────────────────────────────────────────
export function init(id: i32, m: i32, ram: f64): void {
  hartId = <u64>id;
  base = STATE_BASE + <usize>id * STATE_STRIDE;
  xb = base + X_OFF;
  fb = base + F_OFF;
  tlbTags = base + TLB_TAGS;
  tlbDeltas = base + TLB_DELTAS;
  mode = m;
  ramSize = <u64>ram;
  reset();
}

/** Reset architectural state (privileged 1.12 §3.4): M-mode, everything cleared. */
export function reset(): void {
  memory.fill(base, 0, STATE_STRIDE);
  store<i32>(base + WHERE, WHERE_HOST);
  pc = 0; priv = 3; ev = EV_NONE;
  mstatus = 0; medeleg = 0; mideleg = 0; mie = 0; mipSw = 0; mipExt = 0;
  mtvec = 0; stvec = 0; mepc = 0; sepc = 0; mcause = 0; scause = 0; mtval = 0; stval = 0;
  mscratch = 0; sscratch = 0; satp = 0; mcounteren = 0; scounteren = 0; menvcfg = 0; senvcfg = 0;
  mcountinhibit = 0; pmpcfg0 = 0; pmpcfg2 = 0; fflags = 0; frm = 0; instret = 0; cycleDelta = 0;
  resValid = false;
  fpu.fflags = 0;
  updateKeys();
  flushTlb();
  if (jitOn) jitFlush(); // RAM is about to be reloaded without a FENCE.I
}

export function setMode(m: i32): void { mode = m; }
export function stateBase(): usize { return base; }
export function xBase(): usize { return xb; }
export function fBase(): usize { return fb; }
export function scratchAddr(): usize { return base + SCRATCH; }
export function getPc(): u64 { return pc; }
export function setPc(v: u64): void { pc = v; }
export function getPriv(): i32 { return <i32>priv; }
export function setPriv(p: i32): void { priv = <u32>p; updateKeys(); }
export function getInstret(): u64 { return instret; }
export function exitCauseOf(): u64 { return exitCause; }
export function exitTvalOf(): u64 { return exitTval; }
/** Interrupt lines driven from outside the hart (mip bit positions). */
export function setIrqLines(bits: u64): void { mipExt = bits & 0xaaa; }
/** Latch software-interrupt edges (an SBI IPI) into the writable mip bits. */
export function raiseSoftBits(bits: u64): void { mipSw |= bits & MIP_WMASK; }
/** Is an interrupt pending and locally enabled (mip & mie), i.e. would WFI wake? */
export function wfiWake(): bool { return ((mipSw | mipExt) & mie) != 0; }
/** Host CSR access without privilege checks; returns 0 and ok=false for an unknown CSR. */
export function hostCsrRead(n: u32): u64 {
  const p = priv; priv = 3;
  const v = csrRead(n);
  priv = p;
  return v;
}
export function hostCsrOk(): bool { return !csrBad; }
export function hostCsrWrite(n: u32, v: u64): bool {
  const p = priv; priv = 3;
  csrWrite(n, v);
  priv = p;
  updateKeys();
  return !csrBad;
}

// ─── translator interface (src/jit) ───────────────────────────────────────
// Hot code becomes WebAssembly generated at run time by src/jit/translator.ts
// in this hart's thread. Blocks are looked up by the host (= physical)
// address of pc, so they stay valid across satp changes and SFENCE.VMA: the
// fetch TLB (fetchPage) has already checked the virtual → physical mapping,
// and a block never leaves its 4 KiB page (its data accesses go through the
// data TLB at run time). Table entry (16 bytes, direct mapped on hp >> 1):
// u32 tag = hp, i32 v: v > 0 is the function-table index of the block,
// jitHot < v <= 0 counts executions down to the compile threshold,
// v == JIT_COLD means "interpret" (not translatable, or failed to validate);
// u32 generation the block was last checked in, u32 address of its shadow
// copy (the guest bytes it was translated from, written by the translator).
// A block is a function (left: i32, pc: i64) → left that runs at most `left`
// instructions, stores the next pc at base+JIT_PC and returns the new
// budget; returning `left` unchanged means it did not run (budget too small).
// Exceptions come only from the helpers below (ev set, JIT_PC = faulting
// pc, the faulting instruction counted as the interpreter counts it).
const JIT_COLD: i32 = -0x40000000;
let jitHot: i32 = -1; // −(threshold): set by the host (setJitThreshold)
let jitOn: bool = false;
let jitTab: usize = JIT_TAB_BASE;
let jitRetired: u64 = 0; // instructions run by translated blocks (a trapping one included, as instret counts it)
let jitFences: u32 = 0; // FENCE.I executed
let jitCodeWrites: u32 = 0; // stores into translated pages (jitCodeWritten)
let jitRevalidations: u64 = 0; // blocks compared with their shadow copy after a flush
let jitEntries: u64 = 0; // blocks entered from this loop (a chain of blocks that tail-call each other counts once)

@inline function jitEnter(left: i32): i32 {
  const cur = pc;
  const hp = <u32>(cur + fetchDelta);
  const e = jitTab + (<usize>((hp >> 1) & JIT_TAB_MASK) << 4);
  let v = load<i32>(e, 4);
  if (load<u32>(e) != hp) { store<u32>(e, hp); v = 0; }
  if (v > 0) {
    const g = load<u32>(jitTab + JIT_GEN);
    if (load<u32>(e, 8) == g) return jitCall(v, left, cur);
    // Code may have changed since the block was checked: compare it with its shadow copy.
    jitRevalidations++;
    if (jitSameCode(<usize>load<u32>(e, 12), hp)) { store<u32>(e, g, 8); return jitCall(v, left, cur); }
    v = jitHot + 1; // changed: translate again
  }
  if (v > jitHot + 1) { store<i32>(e, v - 1, 4); return left; }
  if (v == jitHot + 1) {
    const f = jitCompile(hp, cur);
    if (f <= 0) { store<i32>(e, JIT_COLD, 4); return left; }
    store<i32>(e, f, 4);
    store<u32>(e, load<u32>(jitTab + JIT_GEN), 8);
    store<u32>(e, load<u32>(jitTab + JIT_RET), 12);
    return jitCall(f, left, cur);
  }
  return left;
}

/** Run the block in table slot f (WHERE tells a profiler that translated code runs). */
@inline function jitCall(f: i32, left: i32, cur: u64): i32 {
  jitEntries++;
  store<i32>(base + WHERE, WHERE_BLOCK);
  const r = call_indirect<i32>(<u32>f, left, cur);
  store<i32>(base + WHERE, WHERE_INTERP);
  return r;
}

/** Are the guest bytes around host address hp those of the shadow copy at s ([u32 length][i32 start relative to hp][bytes])? */
function jitSameCode(s: usize, hp: u32): bool {
  const n = <usize>load<u32>(s);
  const a = s + 8, b = <usize>(<i32>hp + load<i32>(s, 4));
  let i: usize = 0;
  for (; i + 8 <= n; i += 8) if (load<u64>(a + i) != load<u64>(b + i)) return false;
  for (; i < n; i++) if (load<u8>(a + i) != load<u8>(b + i)) return false;
  return true;
}

/**
 * Code may have changed (FENCE.I, remote fence.i, reset, a store into a
 * translated page): bump the generation. Every block is compared with its
 * shadow copy at its next execution, and translated again if it differs.
 */
export function jitFlush(): void { store<u32>(jitTab + JIT_GEN, load<u32>(jitTab + JIT_GEN) + 1); }
/** Forget every entry (code-cache eviction: the function-table slots are gone). */
export function jitClear(): void {
  memory.fill(jitTab, 0, 16 << JIT_TAB_BITS);
  memory.fill(jitTab + JIT_CODEMAP, 0, <usize>((ramSize >> 15) + 1));
  jitFlush();
}
/** The translator evicted the block at host address hp: its lookup entry, if still its own, counts to the threshold anew. */
export function jitForget(hp: u32): void {
  const e = jitTab + (<usize>((hp >> 1) & JIT_TAB_MASK) << 4);
  if (load<u32>(e) == hp) store<i32>(e, 0, 4);
}
@inline function jitIsCodePage(off: u64): bool {
  return ((load<u8>(jitTab + JIT_CODEMAP + <usize>(off >> 15)) >> <u8>((off >> 12) & 7)) & 1) != 0;
}
/**
 * This hart stored into a page it has translated code from (code being
 * written, or the page reused for data): flush (blocks are re-checked
 * against their shadow copies), and let stores to the page take the fast
 * path again until code is translated from it anew. A running block
 * notices the new generation at its next in-region jump.
 */
function jitCodeWritten(off: u64): void {
  jitCodeWrites++;
  const m = jitTab + JIT_CODEMAP + <usize>(off >> 15);
  store<u8>(m, load<u8>(m) & ~(<u8>1 << <u8>((off >> 12) & 7)));
  jitFlush();
}
/** The translator made a block from the page at RAM offset `off`: mark it, and drop store-TLB entries that point at it. */
export function jitMarkCodePage(off: u64): void {
  const m = jitTab + JIT_CODEMAP + <usize>(off >> 15);
  const bit = <u8>1 << <u8>((off >> 12) & 7);
  if ((load<u8>(m) & bit) != 0) return;
  store<u8>(m, load<u8>(m) | bit);
  const host = WASM_RAM_OFFSET + (off & ~0xfff);
  const st = <usize>ACC_STORE * TLB_N;
  for (let i: usize = 0; i < TLB_N; i++) {
    const tag = load<u64>(tlbTags + ((st + i) << 3));
    if (tag == <u64>-1) continue;
    const va = (tag & 0xfffffffffffff) << 12;
    if (va + load<u64>(tlbDeltas + ((st + i) << 3)) == host) store<u64>(tlbTags + ((st + i) << 3), <u64>-1);
  }
}
export function setJit(on: bool): void { jitTab = JIT_TAB_BASE + <usize>hartId * JIT_TAB_STRIDE; jitOn = on; jitClear(); }
/** Executions of a pc (as a block entry) before it is translated; 1 = at once. */
export function setJitThreshold(n: i32): void { jitHot = -max(n, 1); }
export function jitInstructions(): u64 { return jitRetired; }
export function jitFenceCount(): u32 { return jitFences; }
export function jitCodeWriteCount(): u32 { return jitCodeWrites; }
export function jitRevalidationCount(): u64 { return jitRevalidations; }
export function jitEntryCount(): u64 { return jitEntries; }
export function jitRetAddr(): usize { return jitTabAddr() + JIT_RET; }
export function jitShadowAddr(): usize { return jitTabAddr() + JIT_SHADOW; }
export function jitShadowEnd(): usize { return jitTabAddr() + JIT_TAB_STRIDE; }
export function jitTabAddr(): usize { return JIT_TAB_BASE + <usize>hartId * JIT_TAB_STRIDE; }
export function jitGenAddr(): usize { return jitTabAddr() + JIT_GEN; }
export function jitPcAddr(): usize { return base + JIT_PC; }
export function jitDKeyAddr(): usize { return base + JIT_DKEY; }
export function jitFKeyAddr(): usize { return base + JIT_FKEY; }
export function jitTabMask(): u32 { return JIT_TAB_MASK; }
/** Address of the i32 WHERE word (what this hart is doing, for a sampling profiler). */
export function whereAddr(): usize { return base + WHERE; }
export function tlbTagsAddr(): usize { return tlbTags; }
export function tlbDeltasAddr(): usize { return tlbDeltas; }
export function tlbEntries(): i32 { return <i32>TLB_N; }
/** Slow path of a translated integer load (funct3 0..6): TLB refill, page crossing, MMIO. */
export function jitLoad(va: u64, f3: i32): u64 {
  store<i32>(base + WHERE, WHERE_HELPER);
  let v = loadSlow(va, 1 << (f3 & 3));
  if (f3 == 0) v = <u64><i64><i8>v;
  else if (f3 == 1) v = <u64><i64><i16>v;
  else if (f3 == 2) v = <u64><i64><i32>v;
  store<i32>(base + WHERE, WHERE_BLOCK);
  return v;
}
/** Slow path of a translated store (size 1, 2, 4, 8). */
export function jitStore(va: u64, size: i32, v: u64): void {
  store<i32>(base + WHERE, WHERE_HELPER);
  storeSlow(va, size, v);
  store<i32>(base + WHERE, WHERE_BLOCK);
}
/** Did the last helper raise an exception? */
export function jitFault(): bool { return ev != EV_NONE; }
/**
 * An instruction a block leaves to the core — AMO/LR/SC, a CSR instruction,
 * FP — run as the interpreter runs it, the block having stored the x
 * registers it reads or writes (it reloads rd after). `left` is the budget
 * after this instruction (instret/cycle reads). Returns 0 to go on, 1 for an
 * exception (ev set: the block exits at this instruction), 2 when it
 * completed but the block must leave (EV_IRQ: a CSR write; the core then
 * checks interrupts, as after the interpreter's CSR writes).
 */
export function jitCold(insn: u32, raw: u32, left: i32): i32 {
  store<i32>(base + WHERE, WHERE_HELPER);
  batchLeft = left;
  const op = insn & 0x7f;
  if (op == OPC_AMO) execAmo(insn);
  else if (op == OPC_SYSTEM) execSystem(insn, 0); // CSR instructions only (the translator's choice)
  else execFp(insn, raw);
  store<i32>(base + WHERE, WHERE_BLOCK);
  if (ev == EV_NONE) return 0;
  return ev < 64 ? 1 : 2;
}
export function jitMulh(a: u64, b: u64): u64 { return mulh(a, b); }
export function jitMulhsu(a: u64, b: u64): u64 { return mulhsu(a, b); }
export function jitMulhu(a: u64, b: u64): u64 { return mulhu(a, b); }
export function jitDiv(a: u64, b: u64): u64 { return div64(a, b); }
export function jitDivu(a: u64, b: u64): u64 { return b == 0 ? <u64>-1 : a / b; }
export function jitRem(a: u64, b: u64): u64 { return rem64(a, b); }
export function jitRemu(a: u64, b: u64): u64 { return b == 0 ? a : a % b; }
export function jitDivw(a: u64, b: u64): u64 { return div32(a, b); }
export function jitDivuw(a: u64, b: u64): u64 { return divu32(a, b); }
export function jitRemw(a: u64, b: u64): u64 { return rem32(a, b); }
export function jitRemuw(a: u64, b: u64): u64 { return remu32(a, b); }
