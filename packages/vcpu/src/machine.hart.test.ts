// The machine with the real hart core: hand-assembled "kernels" (a RISC-V
// Image header followed by RV64 code) exercise the boot protocol registers,
// the UART, SBI DBCN and HSM (a second hart started by hart_start), and the
// finisher's exit code — in builtin-SBI mode and under Debian's OpenSBI
// fw_dynamic.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createLogger } from '@vmm/core';
import { A, assemble, li, REG } from './hart/asm.ts';
import { KERNEL_LOAD, MMIO, RAM_BASE } from './layout.ts';
import { startMachine, type MachineConfig } from './machine.ts';
import { SBI_EXT } from './platform/sbi.ts';
import { ENGINE_KINDS } from './engine.ts';

const MiB = 1024 * 1024;
const { t0, t1, t2, a0, a1, a2, a6, a7, s0, s1 } = REG;
const HART1_OFFSET = 0x400; // from the Image start
const FLAG_OFFSET = 0x800;
const VIA_HART1_OFFSET = 0x600; // the entry of viaHart1()

function header(imageSize: number): number[] {
  // code0: j 64 (over the header); text_offset 2 MiB; image_size; version 0.2; magics (boot.rst).
  const h = new Uint8Array(64);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, A.jal(0, 64), true);
  dv.setBigUint64(8, 0x20_0000n, true);
  dv.setBigUint64(16, BigInt(imageSize), true);
  dv.setUint32(32, 2, true);
  h.set(new TextEncoder().encode('RISCV\0\0\0'), 48);
  dv.setUint32(56, 0x0543_5352, true);
  return [...h];
}

const putc = (c: string): number[] => [...li(t0, BigInt(c.charCodeAt(0))), A.sb(t0, t2, 0)];
const sbi = (eid: number, fid: number): number[] => [...li(a7, BigInt(eid)), ...li(a6, BigInt(fid)), A.ecall()];

/**
 * The booting hart — whichever it is: under OpenSBI 1.6 any hart may win the
 * cold-boot lottery in sbi_init (fw_dynamic_info.boot_hart only picks the
 * hart that relocates the firmware), so it is not always hart 0 — checks
 * a1 points at a DTB, prints "A" on the UART and "B" through SBI DBCN,
 * starts the other hart (1 − a0) with opaque 0x77 (retrying while SBI says
 * it is not stopped yet), waits for it to store its opaque, then reports it
 * through the finisher as a failure code (so a wrong value shows).
 * The other hart: print "C", store a1 (opaque) to the flag, sleep.
 * With `viaHart1`, hart 0 enters viaHart1() instead, which makes hart 1 the booting hart.
 */
function testKernel(opts: { viaHart1?: boolean } = {}): Uint8Array {
  const flag = BigInt(KERNEL_LOAD + FLAG_OFFSET);
  const startOther = [...li(t0, 1n), A.sub(a0, t0, s1), ...li(a1, BigInt(KERNEL_LOAD + HART1_OFFSET)), ...li(a2, 0x77n), ...sbi(SBI_EXT.HSM, 0)];
  const main = assemble([
    A.addi(s1, a0, 0), // the booting hart's id (RISC-V boot protocol: a0)
    A.lwu(t0, a1, 0), ...li(t1, 0xedfe_0dd0n), A.bne(t0, t1, 0), // hang (branch to self) if no DTB magic
    ...li(t2, BigInt(MMIO.uart0.base)),
    ...putc('A'),
    ...li(a0, 0x42n), ...sbi(SBI_EXT.DBCN, 2),
    ...startOther, A.bne(a0, 0, -4 * startOther.length), // SBI error (the other hart is not stopped yet): again
    ...li(s0, flag),
    A.ld(t0, s0, 0), A.beq(t0, 0, -4),
    A.slli(t0, t0, 16), A.ori(t0, t0, 0x333), ...li(t1, 0x3000n), A.add(t0, t0, t1),
    ...li(t1, BigInt(MMIO.test.base)), A.sw(t0, t1, 0),
    A.wfi(), A.jal(0, -4),
  ]);
  const hart1 = assemble([
    ...li(t2, BigInt(MMIO.uart0.base)), ...putc('C'),
    ...li(s0, flag), A.sd(a1, s0, 0),
    A.wfi(), A.jal(0, -4),
  ]);
  const img = new Uint8Array(FLAG_OFFSET + 8);
  img.set(header(4 * MiB));
  img.set(main, 64);
  img.set(hart1, HART1_OFFSET);
  if (opts.viaHart1) {
    // Hart 0 starts hart 1 at the Image's main with the DTB as opaque (so hart 1 boots as a0 = 1, a1 = DTB), then stops itself.
    img.set(assemble([A.jal(0, VIA_HART1_OFFSET)]), 0);
    img.set(assemble([A.addi(a2, a1, 0), ...li(a0, 1n), ...li(a1, BigInt(KERNEL_LOAD + 64)), ...sbi(SBI_EXT.HSM, 0), ...sbi(SBI_EXT.HSM, 1), A.jal(0, 0)]), VIA_HART1_OFFSET);
  }
  if (64 + main.length > HART1_OFFSET || HART1_OFFSET + hart1.length > VIA_HART1_OFFSET) throw new Error('testKernel: code overlaps');
  return img;
}

function start(over: Partial<MachineConfig>): { m: ReturnType<typeof startMachine>; out: () => string } {
  const chunks: Buffer[] = [];
  const m = startMachine({
    harts: 2,
    memBytes: 64 * MiB,
    kernel: testKernel(),
    append: 'console=ttyS0',
    bios: { kind: 'builtin' },
    console: { input: null, output: (b) => chunks.push(Buffer.from(b)) },
    logger: createLogger('machine-test', undefined, 'silent'),
    ...over,
  });
  return { m, out: () => Buffer.concat(chunks).toString() };
}

function run(over: Partial<MachineConfig>): Promise<{ exit: unknown; out: string }> {
  const { m, out } = start(over);
  return m.exited.then((exit) => ({ exit, out: out() }));
}

// A boot counter in RAM outside every boot image: a reset reloads the images but keeps RAM.
const COUNTER = BigInt(RAM_BASE + 32 * MiB);
const countBoot = (c: string): number[] => [
  ...li(s0, COUNTER), A.ld(t0, s0, 0), A.addi(t0, t0, 1), A.sd(t0, s0, 0),
  ...li(t2, BigInt(MMIO.uart0.base)), ...putc(c), A.ld(t0, s0, 0),
];
function image(code: number[]): Uint8Array {
  const body = assemble(code);
  const img = new Uint8Array(64 + body.length);
  img.set(header(4 * MiB));
  img.set(body, 64);
  return img;
}

/** Prints R and counts the boot; resets through the finisher (0x7777) until the third boot, which fails with the count. */
function rebootingKernel(): Uint8Array {
  const fail = [A.slli(t0, t0, 16), A.ori(t0, t0, 0x333), ...li(t1, 0x3000n), A.add(t0, t0, t1), ...li(t1, BigInt(MMIO.test.base)), A.sw(t0, t1, 0), A.jal(0, 0)];
  const reset = [...li(t0, 0x7777n), ...li(t1, BigInt(MMIO.test.base)), A.sw(t0, t1, 0), A.jal(0, 0)];
  return image([...countBoot('R'), ...li(t1, 3n), A.blt(t0, t1, 4 * (fail.length + 1)), ...fail, ...reset]);
}

/**
 * The counters as firmware leaves them (privileged 1.12 §3.1.11, §4.1.4):
 * S-mode drops to U-mode, which reads time, cycle and instret (Linux's vDSO
 * reads time this way) and then ECALLs. The S-mode trap handler reports
 * (scounteren << 8) | scause through the finisher: 0x708 when U-mode could
 * read all three (ECALL from U, scounteren = 7 as OpenSBI 1.6 sets it),
 * 0x002 or 0x702 when a read was an illegal instruction.
 */
function userCountersKernel(): Uint8Array {
  const USER = 0x400, HANDLER = 0x600;
  const main = assemble([
    ...li(t0, BigInt(KERNEL_LOAD + HANDLER)), A.csrrw(0, 0x105, t0), // stvec
    ...li(t0, BigInt(KERNEL_LOAD + USER)), A.csrrw(0, 0x141, t0), // sepc
    ...li(t0, 0x100n), A.csrrc(0, 0x100, t0), // sstatus.SPP = 0: SRET enters U-mode
    A.sret(),
  ]);
  const user = assemble([A.csrrs(a0, 0xc01, 0), A.csrrs(a1, 0xc00, 0), A.csrrs(a2, 0xc02, 0), A.ecall(), A.jal(0, 0)]);
  const handler = assemble([
    A.csrrs(t0, 0x106, 0), A.slli(t0, t0, 8), A.csrrs(t1, 0x142, 0), A.add(t0, t0, t1),
    A.slli(t0, t0, 16), A.ori(t0, t0, 0x333), ...li(t1, 0x3000n), A.add(t0, t0, t1),
    ...li(t1, BigInt(MMIO.test.base)), A.sw(t0, t1, 0), A.jal(0, 0),
  ]);
  const img = new Uint8Array(HANDLER + handler.length);
  img.set(header(4 * MiB));
  img.set(main, 64);
  img.set(user, USER);
  img.set(handler, HANDLER);
  return img;
}

/**
 * LR/SC and AMOs across harts (ISA §8.2–8.4): both harts run the same loop
 * `n` times — AMOADD.W on counter A, an LR.W/SC.W retry loop incrementing B,
 * and a plain LD/ADDI/SD of C inside an AMOSWAP.D spinlock (the load/store
 * run translated under the jit) — after a barrier, so that they contend.
 * Hart 0 then reports 0x700 | (A ≠ 2n) | (B ≠ 2n) << 1 | (C ≠ 2n) << 2
 * through the finisher: 0x700 when no update was lost.
 */
function smpAtomicsKernel(n: number): Uint8Array {
  const HART1 = 0x400, WORK = 0x600, DATA = 0x2000; // data on its own page
  const data = BigInt(KERNEL_LOAD + DATA);
  const [s1, s2, s3, s4, t3, t4] = [9, 18, 19, 20, 28, 29];
  const READY = 32, DONE = 40;
  const addrs = [...li(s1, data), A.addi(s2, s1, 4), A.addi(s3, s1, 8), A.addi(s4, s1, 16)];
  const callWork = (from: number): number => A.jal(1, WORK - from);
  const main = [
    ...li(a0, 1n), ...li(a1, BigInt(KERNEL_LOAD + HART1)), ...li(a2, 0n), ...sbi(SBI_EXT.HSM, 0),
    ...addrs,
    A.ld(t0, s1, READY), A.beq(t0, 0, -4), // barrier: hart 1 is running
  ];
  const afterWork = [
    A.ld(t0, s1, DONE), A.beq(t0, 0, -4),
    ...li(t1, BigInt(2 * n)), ...li(a2, 0x700n),
    A.lw(t0, s1, 0), A.sub(t0, t0, t1), A.sltu(t0, 0, t0), A.add(a2, a2, t0),
    A.lw(t0, s2, 0), A.sub(t0, t0, t1), A.sltu(t0, 0, t0), A.slli(t0, t0, 1), A.add(a2, a2, t0),
    A.ld(t0, s4, 0), A.sub(t0, t0, t1), A.sltu(t0, 0, t0), A.slli(t0, t0, 2), A.add(a2, a2, t0),
    A.slli(t0, a2, 16), A.ori(t0, t0, 0x333), ...li(t1, 0x3000n), A.add(t0, t0, t1),
    ...li(t1, BigInt(MMIO.test.base)), A.sw(t0, t1, 0),
    A.wfi(), A.jal(0, -4),
  ];
  const mainCode = [...main, callWork(64 + 4 * main.length), ...afterWork];
  const h1 = [...addrs, ...li(t0, 1n), A.sd(t0, s1, READY)];
  const hart1 = [...h1, callWork(HART1 + 4 * h1.length), ...li(t0, 1n), A.sd(t0, s1, DONE), A.wfi(), A.jal(0, -4)];
  const work = [
    ...li(t3, BigInt(n)), ...li(t4, 1n),
    A.amoadd_w(0, s1, t4), // loop:
    A.lr_w(t0, s2), A.addi(t0, t0, 1), A.sc_w(t1, s2, t0), A.bne(t1, 0, -12),
    A.amoswap_d(t0, s3, t4), A.bne(t0, 0, -4), // lock
    A.ld(t0, s4, 0), A.addi(t0, t0, 1), A.sd(t0, s4, 0),
    A.sd(0, s3, 0), // unlock
    A.addi(t3, t3, -1), A.bne(t3, 0, -4 * 12),
    A.jalr(0, 1, 0),
  ];
  const img = new Uint8Array(DATA + 64);
  img.set(header(4 * MiB));
  img.set(assemble(mainCode), 64);
  img.set(assemble(hart1), HART1);
  img.set(assemble(work), WORK);
  if (64 + 4 * mainCode.length > HART1 || HART1 + 4 * hart1.length > WORK) throw new Error('smpAtomicsKernel: code overlaps');
  return img;
}

function openSbiFwDynamic(): Uint8Array {
  const root = join(homedir(), '.cache/vmm/guest');
  const dir = existsSync(root) ? readdirSync(root).find((d) => d.startsWith('opensbi_')) : undefined;
  const path = dir && join(root, dir, 'tree/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin');
  if (!path || !existsSync(path)) throw new Error(`OpenSBI fw_dynamic.bin not found under ${root}: run scripts/setup.sh (pnpm guest fetch)`);
  return readFileSync(path);
}

describe('machine with the RV64 hart core', () => {
  it('builtin SBI: boot registers, UART, DBCN, HSM hart_start with opaque, finisher exit code', async () => {
    const { exit, out } = await run({});
    expect(out).toBe('ABC');
    expect(exit).toEqual({ reason: 'fail', code: 0x77 });
  });

  it('builtin SBI: the same payload when hart 1 is the booting hart (it starts hart 0)', async () => {
    // What OpenSBI's cold-boot lottery does when hart 1 gets there first; before the payload
    // started "the other hart" it started hart 1 from hart 1 (already started) and hung.
    const { exit, out } = await run({ kernel: testKernel({ viaHart1: true }) });
    expect(out).toBe('ABC');
    expect(exit).toEqual({ reason: 'fail', code: 0x77 });
  });

  it('firmware: OpenSBI fw_dynamic boots the same payload in S-mode on 2 harts', async () => {
    const { exit, out } = await run({ bios: { kind: 'firmware', image: openSbiFwDynamic() } });
    expect(out).toContain('OpenSBI v1.6');
    expect(out).toMatch(/Platform HART Count\s+: 2/);
    expect(out).toMatch(/Domain0 Next Address\s+: 0x0*80200000/);
    expect(out).toMatch(/Domain0 Next Mode\s+: S-mode/);
    expect(out.endsWith('ABC')).toBe(true);
    expect(exit).toEqual({ reason: 'fail', code: 0x77 });
  });

  for (const bios of ['builtin', 'firmware'] as const) {
    it(`${bios}: U-mode may read time, cycle and instret (scounteren = 7, as OpenSBI 1.6 leaves it)`, async () => {
      const { exit } = await run({
        kernel: userCountersKernel(), harts: 1,
        ...(bios === 'firmware' ? { bios: { kind: 'firmware', image: openSbiFwDynamic() } } : {}),
      });
      expect(exit).toEqual({ reason: 'fail', code: 0x708 });
    });
  }

  for (const engine of ENGINE_KINDS) {
    it(`${engine}: LR/SC, AMOs and a spinlock-protected plain increment lose no update across 2 harts`, async () => {
      const { exit } = await run({ kernel: smpAtomicsKernel(100_000), engine });
      expect(exit).toEqual({ reason: 'fail', code: 0x700 });
    });
  }

  it('profile: the sampled shares of a hart in a hot loop show translated code, a parked hart the host', async () => {
    // An endless 3-instruction loop (translated after JIT_THRESHOLD); the test waits for samples, not for time.
    const kernel = image([A.addi(t1, t1, 1), A.addi(t0, t0, -1), A.jal(0, -8)]);
    const { m } = start({ kernel, harts: 2, engine: 'jit', profile: true });
    const profiles = () => m.engineInfo().map((i) => i.profile!);
    while (profiles().some((p) => p.samples < 500)) await new Promise((r) => setTimeout(r, 20));
    const [h0, h1] = profiles();
    await m.stop();
    expect(h0!.translated).toBeGreaterThan(0);
    expect(h1!.host).toBe(1); // hart 1 never left HSM STOPPED: all its samples are outside the core
    for (const p of [h0!, h1!]) expect(p.interp + p.translated + p.translating + p.helpers + p.host).toBeCloseTo(1, 2);
  });

  it('a guest reset restarts the machine in place with reboot, and ends it without', async () => {
    const r = await run({ kernel: rebootingKernel(), reboot: true, harts: 1 });
    expect(r.out).toBe('RRR');
    expect(r.exit).toEqual({ reason: 'fail', code: 3 });
    const once = await run({ kernel: rebootingKernel(), harts: 1 });
    expect(once.out).toBe('R');
    expect(once.exit).toEqual({ reason: 'reset', code: 0 });
  });

  it('reset() from the host restarts every hart from its reset vector and runs the reset hooks', async () => {
    const { m, out } = start({ kernel: image([...countBoot('H'), A.wfi(), A.jal(0, -4)]) });
    const causes: string[] = [];
    m.onReset((cause) => { causes.push(cause); });
    const until = async (text: string) => { while (!out().includes(text)) await new Promise((r) => setTimeout(r, 10)); };
    await until('H');
    await m.reset();
    await until('HH');
    m.pause();
    await m.reset(); // a paused machine stays paused across the reset, as on QEMU
    await new Promise((r) => setTimeout(r, 200));
    expect(out()).toBe('HH');
    m.resume();
    await until('HHH');
    expect(causes).toEqual(['host', 'host']);
    await m.stop();
    await expect(m.reset()).rejects.toThrow(/stopped/);
    expect(await m.exited).toMatchObject({ reason: 'poweroff' });
  });
});
