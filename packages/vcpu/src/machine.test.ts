import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { closeFd, createLogger, memfdCreate, mmapShared, munmapBuffer } from '@vmm/core';
import { KERNEL_LOAD, RAM_BASE } from './layout.ts';
import { machineDtb, MachineConfigError, parseKernelImage, planBoot, setHartWorkerUrl, startMachine, type MachineConfig } from './machine.ts';

const MiB = 1024 * 1024;

/** A RISC-V Image header (boot.rst) followed by `body`. */
function image(body: Uint8Array | string, imageSize = 4 * MiB, textOffset = 0x20_0000): Uint8Array {
  const b = typeof body === 'string' ? new TextEncoder().encode(`${body}\0`) : body;
  const out = new Uint8Array(64 + b.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0x0000_6f10, true); // a jump, as real Images start with
  dv.setBigUint64(8, BigInt(textOffset), true);
  dv.setBigUint64(16, BigInt(imageSize), true);
  dv.setUint32(32, 2, true); // header version 0.2
  out.set(new TextEncoder().encode('RISCV\0\0\0'), 48);
  dv.setUint32(56, 0x0543_5352, true);
  out.set(b, 64);
  return out;
}

describe('kernel Image header', () => {
  it('accepts an rv64 Image and reports image_size', () => {
    expect(parseKernelImage(image('x', 30 * MiB))).toEqual({ textOffset: 0x20_0000, imageSize: 30 * MiB });
  });
  it('rejects non-Images and rv32 Images, naming the value', () => {
    const elf = new Uint8Array(128);
    elf.set([0x7f, 0x45, 0x4c, 0x46]);
    expect(() => parseKernelImage(elf)).toThrow(MachineConfigError);
    expect(() => parseKernelImage(elf)).toThrow(/not a RISC-V Image/);
    expect(() => parseKernelImage(new Uint8Array(10))).toThrow(/10 bytes/);
    expect(() => parseKernelImage(image('x', 4 * MiB, 0x40_0000))).toThrow(/text_offset 0x400000/);
    expect(() => parseKernelImage(image(new Uint8Array(100), 16))).toThrow(/image_size 16/);
  });
});

describe('boot layout', () => {
  const kernel = image('k', 30 * MiB);
  it('kernel at 0x80200000, initrd at the next 2 MiB after image_size, DTB 2 MiB-aligned at the top', () => {
    const l = planBoot({ memBytes: 256 * MiB, kernel, initrd: new Uint8Array(5 * MiB), bios: { kind: 'builtin' } }, 3000);
    expect(l.kernel).toEqual({ start: KERNEL_LOAD, end: KERNEL_LOAD + 30 * MiB });
    expect(l.initrd).toEqual({ start: RAM_BASE + 32 * MiB, end: RAM_BASE + 37 * MiB });
    expect(l.dtb).toEqual({ start: RAM_BASE + 254 * MiB, end: RAM_BASE + 254 * MiB + 3000 });
    expect(l.firmware).toBeUndefined();
  });
  it('keeps the DTB below 3 GiB of RAM and places fw_dynamic_info below it with firmware', () => {
    const l = planBoot({ memBytes: 3584 * MiB, kernel, bios: { kind: 'firmware', image: new Uint8Array(300_000) } }, 3000);
    expect(l.dtb.start).toBe(RAM_BASE + 3070 * MiB);
    expect(l.firmware).toEqual({ start: RAM_BASE, end: RAM_BASE + 300_000 });
    expect(l.fwDynamicInfo).toBe(l.dtb.start - 48);
  });
  it('machineDtb gives the DTB and layout a machine would get, initrd range included, without starting one', () => {
    const seed = new Uint8Array(32).fill(1);
    const { dtb, layout } = machineDtb({ harts: 2, memBytes: 128 * MiB, kernel, initrd: new Uint8Array(MiB), append: 'x', bios: { kind: 'builtin' }, rngSeed: seed });
    expect(new DataView(dtb.buffer).getUint32(0)).toBe(0xd00d_feed);
    expect(layout.initrd).toEqual({ start: RAM_BASE + 32 * MiB, end: RAM_BASE + 33 * MiB });
    const start = Buffer.from(dtb).indexOf(Buffer.from([0, 0, 0, 0, 0x82, 0, 0, 0])); // linux,initrd-start as a u64
    expect(start).toBeGreaterThan(0);
    expect(() => machineDtb({ harts: 9, memBytes: 128 * MiB, kernel, append: '', bios: { kind: 'builtin' } })).toThrow(/got 9/);
  });

  it('refuses what does not fit, naming the sizes', () => {
    expect(() => planBoot({ memBytes: 64 * MiB, kernel, initrd: new Uint8Array(40 * MiB), bios: { kind: 'builtin' } }, 3000)).toThrow(/initrd 41943040.*memBytes 67108864/);
    expect(() => planBoot({ memBytes: 64 * MiB, kernel, bios: { kind: 'firmware', image: new Uint8Array(3 * MiB) } }, 3000)).toThrow(/firmware image of 3145728 bytes/);
  });
});

setHartWorkerUrl(new URL('./machine.fixture-worker.ts', import.meta.url));

function config(script: object, over: Partial<MachineConfig> = {}): { cfg: MachineConfig; out: () => string } {
  const chunks: Buffer[] = [];
  const cfg: MachineConfig = {
    harts: 2,
    memBytes: 64 * MiB,
    kernel: image(JSON.stringify(script)),
    append: 'console=ttyS0',
    bios: { kind: 'builtin' },
    console: { input: null, output: (b) => chunks.push(Buffer.from(b)) },
    logger: createLogger('machine-test', undefined, 'silent'),
    ...over,
  };
  return { cfg, out: () => Buffer.concat(chunks).toString() };
}

describe('machine lifecycle (stand-in hart worker)', () => {
  it('rejects a bad hart count and RAM size before starting anything', () => {
    expect(() => startMachine(config({}, { harts: 0 }).cfg)).toThrow(/harts must be an integer 1..8, got 0/);
    expect(() => startMachine(config({}, { memBytes: 3 * MiB }).cfg)).toThrow(/got 3145728/);
  });

  it('loads the Image and DTB into the RAM memfd, pumps UART output, exits with the finisher code', async () => {
    let dtb: Uint8Array | undefined;
    const { cfg, out } = config({ checkDtb: true, uart: 'hello from hart 0\n', finisher: 0x3333 | (42 << 16) }, { dtbOut: (b) => { dtb = b; } });
    const m = startMachine(cfg);
    // The memfd really is guest RAM: another mapping of it sees the Image header.
    const mapping = mmapShared(m.ramFd, 64 * MiB);
    const view = new Uint8Array(mapping);
    expect(Buffer.from(view.subarray(KERNEL_LOAD - RAM_BASE + 48, KERNEL_LOAD - RAM_BASE + 53)).toString()).toBe('RISCV');
    munmapBuffer(mapping);
    expect(await m.exited).toEqual({ reason: 'fail', code: 42 });
    expect(out()).toBe('dtb-ok\nhello from hart 0\n');
    expect(dtb![0]).toBe(0xd0);
  });

  it('feeds console input to the UART', async () => {
    const input = new PassThrough();
    const chunks: Buffer[] = [];
    const { cfg } = config({ uart: 'ready\n', echo: 3, finisher: 0x5555 }, { console: { input, output: (b) => chunks.push(Buffer.from(b)) } });
    const m = startMachine(cfg);
    input.write('abc');
    expect(await m.exited).toEqual({ reason: 'poweroff', code: 0 });
    expect(Buffer.concat(chunks).toString()).toBe('ready\necho:abc\n');
  });

  it('a worker that throws ends the machine with reason error', async () => {
    const m = startMachine(config({ throw: 'boom' }).cfg);
    const e = await m.exited;
    expect(e.reason).toBe('error');
    expect(e.message).toMatch(/hart 0: boom/);
  });

  it('a hart reporting an error or an unhandled trap ends the machine with reason error', async () => {
    expect(await startMachine(config({ report: 'core failed' }).cfg).exited).toMatchObject({ reason: 'error', message: 'hart 0: core failed' });
    expect(await startMachine(config({ fatal: true }).cfg).exited).toMatchObject({ reason: 'error', message: 'hart 0: unhandled trap, cause 0x2 tval 0x13 at pc 0x80200000 (priv 1)' });
  });

  it('refuses a RAM memfd smaller than memBytes', () => {
    const fd = memfdCreate('small', 32 * MiB);
    expect(() => startMachine(config({}, { ramFd: fd }).cfg)).toThrow(`ramFd ${fd} holds 33554432 bytes, less than memBytes 67108864`);
    closeFd(fd);
  });

  it('stop() ends a running machine', async () => {
    const fd = memfdCreate('t', 64 * MiB);
    const m = startMachine(config({ uart: 'x' }, { ramFd: fd }).cfg);
    expect(m.ramFd).toBe(fd);
    await m.stop();
    expect(await m.exited).toMatchObject({ reason: 'poweroff', message: 'stopped by host' });
    closeFd(fd);
  });
});
