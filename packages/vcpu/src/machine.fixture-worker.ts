// A stand-in hart for machine.test.ts: it exercises the machine's plumbing
// (RAM memfd loaded by the main thread, DTB pointer, platform devices shared
// with the main thread, console pump, exit paths) without the RV64 core. It
// reads a JSON script that the test placed in the kernel Image right after
// its 64-byte header and drives the real device models over the real bus.

import { parentPort, workerData } from 'node:worker_threads';
import { RAM_BASE, WASM_RAM_OFFSET, MMIO } from './layout.ts';
import { RUN } from './signals.ts';
import { createPlatform, type PlatformState } from './platform/index.ts';
import type { HartWorkerData, HartWorkerMessage } from './hart/hart-worker.ts';

interface Script { uart?: string; echo?: number; finisher?: number; throw?: string; report?: string; fatal?: boolean; checkDtb?: boolean }

const d = workerData as HartWorkerData;
const p = createPlatform(d.platform as PlatformState, d.hartId);
const ram = new Uint8Array(d.memory.buffer, WASM_RAM_OFFSET, d.ramSize);
const cell = p.signals.irqCell(d.hartId);
const idle = (): void => { while (p.signals.runState() !== RUN.STOPPING) Atomics.wait(cell.array, cell.index, Atomics.load(cell.array, cell.index), 50); };

const done = (): void => parentPort?.postMessage({ type: 'exit', hartId: d.hartId, exit: { kind: 'stopping' }, instret: 0n, cpuMs: 0 } satisfies HartWorkerMessage);
if (d.hartId !== 0) {
  idle();
  done();
} else {
  const at = Number(d.boot.pc) - RAM_BASE + 64;
  const end = ram.indexOf(0, at);
  const script = JSON.parse(new TextDecoder().decode(ram.subarray(at, end))) as Script;
  const put = (s: string): void => { for (const b of Buffer.from(s)) p.bus.store(MMIO.uart0.base, 1, BigInt(b), d.hartId); };
  if (script.checkDtb) {
    const dtb = Number(d.boot.a1) - RAM_BASE;
    put(ram[dtb] === 0xd0 && ram[dtb + 1] === 0x0d && ram[dtb + 2] === 0xfe && ram[dtb + 3] === 0xed ? 'dtb-ok\n' : 'dtb-bad\n');
  }
  if (script.uart) put(script.uart);
  if (script.echo) {
    let got = '';
    while (got.length < script.echo && p.signals.runState() !== RUN.STOPPING) {
      if ((p.bus.load(MMIO.uart0.base + 5, 1, d.hartId)! & 1n) !== 0n) got += String.fromCharCode(Number(p.bus.load(MMIO.uart0.base, 1, d.hartId)));
      else Atomics.wait(cell.array, cell.index, Atomics.load(cell.array, cell.index), 5);
    }
    put(`echo:${got}\n`);
  }
  if (script.throw) throw new Error(script.throw);
  if (script.report) parentPort?.postMessage({ type: 'error', hartId: d.hartId, message: script.report } satisfies HartWorkerMessage);
  if (script.fatal) {
    parentPort?.postMessage({ type: 'exit', hartId: d.hartId, exit: { kind: 'fatal', cause: 2n, tval: 0x13n, pc: d.boot.pc, priv: 1 }, instret: 5n, cpuMs: 0 } satisfies HartWorkerMessage);
  } else {
    if (script.finisher !== undefined) p.bus.store(MMIO.test.base, 4, BigInt(script.finisher), d.hartId);
    idle();
    done();
  }
}
