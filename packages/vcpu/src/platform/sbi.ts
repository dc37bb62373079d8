// Supervisor Binary Interface 2.0 implemented in TypeScript: the machine
// plays the SEE for an S-mode kernel booted without firmware (as KVM RISC-V
// does). Calling convention (SBI 2.0 §3): a7 = extension id, a6 = function
// id, a0..a5 arguments; returns a0 = error, a1 = value. Legacy extensions
// (§5, EIDs 0x00..0x0f) return a single value in a0.

import type { HartRegs, SbiHandler, SbiOutcome } from '../bus.ts';
import { HSM, MIP, REQ, RUN, type HartSignals } from '../signals.ts';
import type { ConsoleChannel } from './console.ts';
import { EXIT_REASON, type ExitSlot } from './finisher.ts';

/** Standard SBI error codes (SBI 2.0 §3, table 1). */
export const SBI_ERR = {
  SUCCESS: 0,
  FAILED: -1,
  NOT_SUPPORTED: -2,
  INVALID_PARAM: -3,
  DENIED: -4,
  INVALID_ADDRESS: -5,
  ALREADY_AVAILABLE: -6,
  ALREADY_STARTED: -7,
  ALREADY_STOPPED: -8,
  NO_SHMEM: -9,
} as const;

export const SBI_EXT = {
  BASE: 0x10,
  TIME: 0x5449_4d45, // "TIME"
  IPI: 0x73_5049, // "sPI"
  RFENCE: 0x5246_4e43, // "RFNC"
  HSM: 0x48_534d, // "HSM"
  SRST: 0x5352_5354, // "SRST"
  DBCN: 0x4442_434e, // "DBCN"
  LEGACY_SET_TIMER: 0x00,
  LEGACY_CONSOLE_PUTCHAR: 0x01,
  LEGACY_CONSOLE_GETCHAR: 0x02,
  LEGACY_CLEAR_IPI: 0x03,
  LEGACY_SHUTDOWN: 0x08,
} as const;

/** SBI spec version 2.0: major in bits 30:24, minor in 23:0 (§4.1). */
export const SBI_SPEC_VERSION = (2 << 24) | 0;
/**
 * Implementation id (§4.9 lists the registered ones). We are none of them;
 * this value is outside the registry's range and spells "vmm".
 */
export const SBI_IMPL_ID = 0x76_6d6d;
export const SBI_IMPL_VERSION = 1;

const SUPPORTED = new Set<number>([
  SBI_EXT.BASE, SBI_EXT.TIME, SBI_EXT.IPI, SBI_EXT.RFENCE, SBI_EXT.HSM, SBI_EXT.SRST, SBI_EXT.DBCN,
  SBI_EXT.LEGACY_SET_TIMER, SBI_EXT.LEGACY_CONSOLE_PUTCHAR, SBI_EXT.LEGACY_CONSOLE_GETCHAR, SBI_EXT.LEGACY_CLEAR_IPI, SBI_EXT.LEGACY_SHUTDOWN,
]);

const A0 = 10;
const A1 = 11;
const A6 = 16;
const A7 = 17;
const ALL_ONES = 0xffff_ffff_ffff_ffffn;
/** Longest DBCN transfer handled in one call; the caller loops on the returned count (§12.1). */
const DBCN_MAX_CHUNK = 4096;

export interface SbiContext {
  signals: HartSignals;
  console: ConsoleChannel;
  exit: ExitSlot;
  ramBase: number;
  ramBytes: number;
}

export class Sbi implements SbiHandler {
  private readonly ctx: SbiContext;

  constructor(ctx: SbiContext) {
    this.ctx = ctx;
  }

  call(regs: HartRegs): SbiOutcome {
    const eid = Number(regs.x(A7) & 0xffff_ffffn);
    const fid = Number(regs.x(A6) & 0xffff_ffffn);
    if (eid <= 0x0f) return this.legacy(regs, eid);
    let r: { error: number; value?: bigint; outcome?: SbiOutcome };
    switch (eid) {
      case SBI_EXT.BASE: r = this.base(regs, fid); break;
      case SBI_EXT.TIME: r = this.time(regs, fid); break;
      case SBI_EXT.IPI: r = this.ipi(regs, fid); break;
      case SBI_EXT.RFENCE: r = this.rfence(regs, fid); break;
      case SBI_EXT.HSM: r = this.hsm(regs, fid); break;
      case SBI_EXT.SRST: r = this.srst(regs, fid); break;
      case SBI_EXT.DBCN: r = this.dbcn(regs, fid); break;
      default: r = { error: SBI_ERR.NOT_SUPPORTED };
    }
    regs.setX(A0, BigInt(r.error));
    // a1 is left untouched on error for functions that define no value (§3: "a1 ... undefined").
    if (r.value !== undefined) regs.setX(A1, r.value);
    return r.outcome ?? 'continue';
  }

  private arg(regs: HartRegs, i: number): bigint {
    return BigInt.asUintN(64, regs.x(A0 + i));
  }

  /** §4 Base extension. */
  private base(regs: HartRegs, fid: number): { error: number; value?: bigint } {
    switch (fid) {
      case 0: return { error: 0, value: BigInt(SBI_SPEC_VERSION) };
      case 1: return { error: 0, value: BigInt(SBI_IMPL_ID) };
      case 2: return { error: 0, value: BigInt(SBI_IMPL_VERSION) };
      case 3: {
        const probe = this.arg(regs, 0);
        return { error: 0, value: probe <= 0xffff_ffffn && SUPPORTED.has(Number(probe)) ? 1n : 0n };
      }
      case 4: // mvendorid
      case 5: // marchid
      case 6: // mimpid
        return { error: 0, value: 0n };
      default: return { error: SBI_ERR.NOT_SUPPORTED };
    }
  }

  /** §6 Timer extension: program the next timer event and clear a pending one. */
  private time(regs: HartRegs, fid: number): { error: number } {
    if (fid !== 0) return { error: SBI_ERR.NOT_SUPPORTED };
    this.setTimer(regs.hartId, this.arg(regs, 0));
    return { error: 0 };
  }

  private setTimer(hart: number, t: bigint): void {
    this.ctx.signals.setTimecmp(hart, t);
    // The STIP raised for the previous deadline goes away; the hart raises it again when time >= t.
    this.ctx.signals.lower(hart, MIP.STIP);
  }

  /**
   * The harts a (hart_mask, hart_mask_base) pair names (§3.1 "Hart list
   * parameter"): base = -1 means every hart; otherwise bit i of the mask
   * names hart base + i, and naming a hart that does not exist is INVALID_PARAM.
   */
  private targets(mask: bigint, base: bigint): number[] | null {
    const n = this.ctx.signals.harts;
    if (base === ALL_ONES) return Array.from({ length: n }, (_, i) => i);
    const out: number[] = [];
    for (let i = 0n; mask !== 0n; i++, mask >>= 1n) {
      if ((mask & 1n) === 0n) continue;
      const h = base + i;
      if (h >= BigInt(n)) return null;
      out.push(Number(h));
    }
    return out;
  }

  /** §7 IPI extension: send_ipi sets SSIP on every target. */
  private ipi(regs: HartRegs, fid: number): { error: number } {
    if (fid !== 0) return { error: SBI_ERR.NOT_SUPPORTED };
    const t = this.targets(this.arg(regs, 0), this.arg(regs, 1));
    if (!t) return { error: SBI_ERR.INVALID_PARAM };
    for (const h of t) this.ctx.signals.raise(h, MIP.SSIP);
    return { error: 0 };
  }

  /**
   * §8 RFENCE: remote fence.i and sfence.vma (any range/ASID) become a full
   * TLB + fetch flush request on each target. The call waits until every
   * running target has taken its request (the hart clears REQ.TLB_FLUSH after
   * flushing), because Linux frees or reuses pages right after it returns.
   * A caller that has a flush request of its own pending stops waiting, so
   * two harts fencing each other at once cannot deadlock: each then flushes
   * at its next poll.
   */
  private rfence(regs: HartRegs, fid: number): { error: number } {
    if (fid > 2) return { error: SBI_ERR.NOT_SUPPORTED }; // hfence.* need the H extension
    const t = this.targets(this.arg(regs, 0), this.arg(regs, 1));
    if (!t) return { error: SBI_ERR.INVALID_PARAM };
    const s = this.ctx.signals;
    const remote: number[] = [];
    // remote_fence_i (fid 0) also drops translated code; both bits are consumed by one poll.
    const req = fid === 0 ? REQ.TLB_FLUSH | REQ.FENCE_I : REQ.TLB_FLUSH;
    for (const h of t) {
      s.raise(h, req);
      if (h !== regs.hartId) remote.push(h);
    }
    for (const h of remote) {
      const cell = s.irqCell(h);
      for (;;) {
        const v = Atomics.load(cell.array, cell.index);
        if ((v & REQ.TLB_FLUSH) === 0) break;
        if (s.hsmState(h) !== HSM.STARTED || s.runState() !== RUN.RUNNING) break; // parked, paused or stopping: it flushes before running again
        if ((s.irq(regs.hartId) & REQ.TLB_FLUSH) !== 0) break;
        Atomics.wait(cell.array, cell.index, v, 0.1); // the hart clears the bit without a notify: poll
      }
    }
    return { error: 0 };
  }

  /** §9 Hart State Management. */
  private hsm(regs: HartRegs, fid: number): { error: number; value?: bigint; outcome?: SbiOutcome } {
    const s = this.ctx.signals;
    switch (fid) {
      case 0: { // hart_start(hartid, start_addr, opaque)
        const hart = this.arg(regs, 0);
        if (hart >= BigInt(s.harts)) return { error: SBI_ERR.INVALID_PARAM };
        const h = Number(hart);
        const addr = this.arg(regs, 1);
        if (addr < BigInt(this.ctx.ramBase) || addr >= BigInt(this.ctx.ramBase + this.ctx.ramBytes)) return { error: SBI_ERR.INVALID_ADDRESS };
        const busy = (): { error: number } => ({ error: s.hsmState(h) === HSM.START_PENDING ? SBI_ERR.ALREADY_STARTED : SBI_ERR.ALREADY_AVAILABLE });
        if (s.hsmState(h) !== HSM.STOPPED) return busy();
        // Publish the entry point before the state change the target hart waits for.
        s.setStart(h, addr, this.arg(regs, 2));
        if (!s.casHsmState(h, HSM.STOPPED, HSM.START_PENDING)) return busy();
        s.wake(h);
        return { error: 0 };
      }
      case 1: { // hart_stop(): does not return on success
        if (!s.casHsmState(regs.hartId, HSM.STARTED, HSM.STOPPED)) return { error: SBI_ERR.FAILED };
        return { error: 0, outcome: 'stop' };
      }
      case 2: { // hart_get_status(hartid)
        const hart = this.arg(regs, 0);
        if (hart >= BigInt(s.harts)) return { error: SBI_ERR.INVALID_PARAM };
        return { error: 0, value: BigInt(s.hsmState(Number(hart))) };
      }
      case 3: { // hart_suspend(suspend_type, resume_addr, opaque)
        const type = this.arg(regs, 0);
        // Default retentive suspend (0x0) behaves like WFI: returning at once is a
        // spurious wake-up, which the caller must tolerate (§9.4).
        if (type === 0n) return { error: 0 };
        // Non-retentive (0x8000_0000) and platform-specific types are not offered.
        if (type === 0x8000_0000n || (type >= 0x1000_0000n && type <= 0x7fff_ffffn) || type >= 0xf000_0000n) return { error: SBI_ERR.NOT_SUPPORTED };
        return { error: SBI_ERR.INVALID_PARAM };
      }
      default: return { error: SBI_ERR.NOT_SUPPORTED };
    }
  }

  /** §10 System Reset. */
  private srst(regs: HartRegs, fid: number): { error: number; outcome?: SbiOutcome } {
    if (fid !== 0) return { error: SBI_ERR.NOT_SUPPORTED };
    const type = this.arg(regs, 0);
    const reason = this.arg(regs, 1);
    if (type > 2n && type < 0xf000_0000n) return { error: SBI_ERR.INVALID_PARAM };
    if (type > 2n) return { error: SBI_ERR.NOT_SUPPORTED }; // vendor reset types
    if (reason > 1n && reason < 0xe000_0000n) return { error: SBI_ERR.INVALID_PARAM };
    if (type === 0n) {
      // Shutdown; "system failure" (reason 1) is reported as a failing exit.
      if (reason === 1n) this.ctx.exit.request(EXIT_REASON.FAIL, 1);
      else this.ctx.exit.request(EXIT_REASON.POWEROFF, 0);
    } else {
      this.ctx.exit.request(EXIT_REASON.RESET, 0);
    }
    return { error: 0, outcome: 'shutdown' };
  }

  /** §12 Debug Console: buffers are guest-physical (base_addr_lo/hi). */
  private dbcn(regs: HartRegs, fid: number): { error: number; value?: bigint } {
    switch (fid) {
      case 0:
      case 1: {
        const num = this.arg(regs, 0);
        const n = num > BigInt(DBCN_MAX_CHUNK) ? DBCN_MAX_CHUNK : Number(num);
        const addr = (this.arg(regs, 2) << 32n) | (this.arg(regs, 1) & 0xffff_ffffn);
        if (fid === 0) {
          const bytes = regs.readPhys(addr, n);
          if (!bytes) return { error: SBI_ERR.INVALID_PARAM };
          this.ctx.console.write(bytes);
          return { error: 0, value: BigInt(bytes.length) };
        }
        if (regs.readPhys(addr, n) === null) return { error: SBI_ERR.INVALID_PARAM };
        const got = this.ctx.console.read(n);
        if (!regs.writePhys(addr, got)) return { error: SBI_ERR.INVALID_PARAM };
        return { error: 0, value: BigInt(got.length) };
      }
      case 2:
        this.ctx.console.writeByte(Number(this.arg(regs, 0) & 0xffn));
        return { error: 0 };
      default: return { error: SBI_ERR.NOT_SUPPORTED };
    }
  }

  /** §5 Legacy extensions (SBI v0.1): result in a0 only. */
  private legacy(regs: HartRegs, eid: number): SbiOutcome {
    switch (eid) {
      case SBI_EXT.LEGACY_SET_TIMER:
        this.setTimer(regs.hartId, this.arg(regs, 0));
        regs.setX(A0, 0n);
        return 'continue';
      case SBI_EXT.LEGACY_CONSOLE_PUTCHAR:
        this.ctx.console.writeByte(Number(this.arg(regs, 0) & 0xffn));
        regs.setX(A0, 0n);
        return 'continue';
      case SBI_EXT.LEGACY_CONSOLE_GETCHAR:
        regs.setX(A0, BigInt(this.ctx.console.readByte())); // -1 when nothing is waiting
        return 'continue';
      case SBI_EXT.LEGACY_CLEAR_IPI:
        this.ctx.signals.lower(regs.hartId, MIP.SSIP);
        regs.setX(A0, 0n);
        return 'continue';
      case SBI_EXT.LEGACY_SHUTDOWN:
        this.ctx.exit.request(EXIT_REASON.POWEROFF, 0);
        return 'shutdown';
      default:
        // 0x04 send_ipi .. 0x07 take virtual addresses of hart masks; not offered.
        regs.setX(A0, BigInt(SBI_ERR.NOT_SUPPORTED));
        return 'continue';
    }
  }
}
