// The `-M virt`-shaped platform: device models whose state lives in
// SharedArrayBuffers. The main thread creates the state once
// (createPlatformState); every hart worker builds its own model objects over
// it (createPlatform) and handles MMIO and SBI calls on its own thread.

import { ConfigError, eventfdWrite } from '@vmm/core';
import type { PhysBus, SbiHandler } from '../bus.ts';
import { IRQ, MAX_HARTS, MMIO, RAM_BASE } from '../layout.ts';
import { HartSignals } from '../signals.ts';
import { Clint } from './clint.ts';
import { ConsoleChannel, createConsoleState, type ConsoleState } from './console.ts';
import { createExitState, ExitSlot, SifiveTest } from './finisher.ts';
import { MmioBus } from './physbus.ts';
import { createPlicState, Plic } from './plic.ts';
import { createPowerButtonState, PowerButton } from './power-button.ts';
import { createRtcState, GoldfishRtc } from './rtc.ts';
import { Sbi } from './sbi.ts';
import { createUartState, resetUartState, Uart16550 } from './uart.ts';
import { transportHook, VirtioMmioSlot } from './virtio-mmio.ts';
import { VirtioMmioState } from '../virtio-mmio/transport.ts';

export class PlatformConfigError extends ConfigError {
  constructor(message: string) {
    super(message, 'ERR_PLATFORM_CONFIG');
  }
}

export interface PlatformConfig {
  harts: number;
  memBytes: number;
}

/** Everything a hart worker needs to rebuild the platform: SharedArrayBuffers and plain data (structured-cloneable). */
export interface PlatformState {
  harts: number;
  ramBase: number;
  memBytes: number;
  signals: SharedArrayBuffer;
  plic: SharedArrayBuffer;
  uart: SharedArrayBuffer;
  console: ConsoleState;
  rtc: SharedArrayBuffer;
  exit: SharedArrayBuffer;
  power: SharedArrayBuffer;
  /** Register files of the 8 virtio-mmio transports (VirtioMmioState buffers); a slot with no device plugged reads as empty. */
  virtio: SharedArrayBuffer[];
}

export function createPlatformState(cfg: PlatformConfig): PlatformState {
  if (!Number.isInteger(cfg.harts) || cfg.harts < 1 || cfg.harts > MAX_HARTS) throw new PlatformConfigError(`harts must be an integer 1..${MAX_HARTS}, got ${cfg.harts}`);
  if (!Number.isInteger(cfg.memBytes) || cfg.memBytes <= 0 || cfg.memBytes % 4096 !== 0) throw new PlatformConfigError(`memBytes must be a positive multiple of 4096, got ${cfg.memBytes}`);
  const signals = new HartSignals(cfg.harts);
  return {
    harts: cfg.harts,
    ramBase: RAM_BASE,
    memBytes: cfg.memBytes,
    signals: signals.buffer,
    plic: createPlicState(),
    uart: createUartState(),
    console: createConsoleState(),
    rtc: createRtcState(),
    exit: createExitState(),
    power: createPowerButtonState(),
    virtio: Array.from({ length: MMIO.virtio.count }, () => new VirtioMmioState().buffer),
  };
}

/**
 * Put the platform back in its reset state for a system reset, while no hart
 * runs: interrupt lines, HSM states and timer deadlines, the PLIC, the UART's
 * registers, the exit slot, the power button, and every plugged virtio-mmio transport (reset as
 * if its driver wrote 0 to Status). Kept, as on a real board: the console
 * rings (output not yet shown, input not yet read), the RTC's wall clock and the timebase.
 */
export function resetPlatformState(state: PlatformState): void {
  new HartSignals(state.harts, state.signals).resetHarts();
  new Int32Array(state.plic).fill(0);
  resetUartState(state.uart);
  new Int32Array(state.exit).fill(0);
  new Int32Array(state.power).fill(0);
  for (const regs of state.virtio) new VirtioMmioState(regs).systemReset();
}

export interface Platform {
  bus: PhysBus;
  sbi: SbiHandler;
  signals: HartSignals;
  plic: Plic;
  uart: Uart16550;
  console: ConsoleChannel;
  exit: ExitSlot;
  rtc: GoldfishRtc;
  power: PowerButton;
  /** The 8 virtio-mmio slots, index i at MMIO.virtio.base + i * 0x1000 (PLIC source 1 + i). */
  virtio: VirtioMmioSlot[];
}

/**
 * Build this thread's device models over the shared state. Called inside
 * each hart worker (hartId = that hart) and on the main thread (console pump,
 * lifecycle: any hartId) — all copies drive the same devices.
 */
export function createPlatform(state: PlatformState, hartId: number): Platform {
  if (!Number.isInteger(hartId) || hartId < 0 || hartId >= state.harts) throw new PlatformConfigError(`hartId must be 0..${state.harts - 1}, got ${hartId}`);
  const signals = new HartSignals(state.harts, state.signals);
  const plic = new Plic(state.plic, signals);
  const console = new ConsoleChannel(state.console);
  const uart = new Uart16550(state.uart, console, plic);
  const exit = new ExitSlot(state.exit, signals);
  const rtc = new GoldfishRtc(state.rtc);
  const power = new PowerButton(state.power);
  const virtio = Array.from({ length: MMIO.virtio.count }, (_, i) => {
    const slot = new VirtioMmioSlot(i);
    const regs = state.virtio[i];
    if (regs) {
      // QueueNotify → the queue's kick eventfd, written on this hart's thread (ioeventfd).
      const kick = (fd: number): void => { eventfdWrite(fd); };
      slot.attach(transportHook(new VirtioMmioState(regs), kick, (level) => plic.setLevel(IRQ.virtioFirst + i, level)));
    }
    return slot;
  });
  const bus = new MmioBus([new SifiveTest(exit), rtc, power, new Clint(signals), plic, uart, ...virtio]);
  const sbi = new Sbi({ signals, console, exit, ramBase: state.ramBase, ramBytes: state.memBytes });
  return { bus, sbi, signals, plic, uart, console, exit, rtc, power, virtio };
}

export { Plic, PlicError } from './plic.ts';
export { Clint } from './clint.ts';
export { Uart16550 } from './uart.ts';
export { GoldfishRtc } from './rtc.ts';
export { PowerButton } from './power-button.ts';
export { SifiveTest, ExitSlot, EXIT_REASON, type ExitReasonName } from './finisher.ts';
export { VirtioMmioSlot, VIRTIO_MMIO_MAGIC, VIRTIO_MMIO_VERSION, type VirtioMmioDeviceHook } from './virtio-mmio.ts';
export { MmioBus, BusError } from './physbus.ts';
export { Sbi, SBI_ERR, SBI_EXT, SBI_SPEC_VERSION, SBI_IMPL_ID, type SbiContext } from './sbi.ts';
export { ConsoleChannel, type ConsoleState } from './console.ts';
export { ByteRing, SharedMutex } from './sync.ts';
export { DtNode, DtbError, encodeFdt, buildVirtDtb, dumpDtb, RISCV_ISA, RISCV_ISA_EXTENSIONS, type DtValue, type VirtDtbConfig, type DtbIommu } from './dtb.ts';
