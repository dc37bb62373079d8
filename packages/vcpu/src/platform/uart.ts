// ns16550a UART at 0x1000_0000, PLIC source 10 (QEMU virt). Register
// semantics follow the National Semiconductor PC16550D datasheet and QEMU's
// hw/char/serial.c (the reference the Linux 8250 driver is tested against):
//   0 RBR (read) / THR (write) / DLL (DLAB=1)
//   1 IER / DLM (DLAB=1)
//   2 IIR (read) / FCR (write)
//   3 LCR   4 MCR   5 LSR   6 MSR   7 SCR
// Transmission is instantaneous: a byte written to THR goes straight to the
// console ring, so THRE and TEMT stay set and, with ETBEI enabled, a THRE
// interrupt is pending until IIR is read or THR written again. Received bytes
// come from the console RX ring filled by the main thread; "data ready" is
// simply "ring not empty" (the FIFO character timeout collapses to zero).
//
// State lives in a SharedArrayBuffer and every update runs under a mutex, so
// any hart (and the main thread, after queueing input) can call into it.

import type { AccessSize, MmioDevice } from '../bus.ts';
import { IRQ, MMIO } from '../layout.ts';
import type { ConsoleChannel } from './console.ts';
import type { Plic } from './plic.ts';
import { SharedMutex } from './sync.ts';

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_RDI = 0x04;
const IIR_FIFO = 0xc0;
const FCR_ENABLE = 0x01;
const LCR_DLAB = 0x80;
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const LSR_DR = 0x01;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;

// Int32 cells
const S_LOCK = 0;
const S_IER = 1;
const S_LCR = 2;
const S_MCR = 3;
const S_SCR = 4;
const S_DLL = 5;
const S_DLM = 6;
const S_FCR = 7;
const S_THR_IPENDING = 8;
const S_CELLS = 9;

export function createUartState(): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(S_CELLS * 4);
  resetUartState(sab);
  return sab;
}

/** Registers to their reset values (no hart may be using the UART). */
export function resetUartState(sab: SharedArrayBuffer): void {
  const s = new Int32Array(sab);
  s.fill(0);
  s[S_LCR] = 0x03; // 8N1, as after a reset
  s[S_DLL] = 0x0c; // 9600 baud at 1.8432 MHz, the reset value QEMU uses
}

export class Uart16550 implements MmioDevice {
  readonly name = 'uart0';
  readonly base = MMIO.uart0.base;
  readonly size = MMIO.uart0.size;
  private readonly s: Int32Array;
  private readonly lock: SharedMutex;
  private readonly console: ConsoleChannel;
  private readonly plic: Plic;

  constructor(state: SharedArrayBuffer, console: ConsoleChannel, plic: Plic) {
    this.s = new Int32Array(state);
    this.lock = new SharedMutex(this.s, S_LOCK);
    this.console = console;
    this.plic = plic;
  }

  read(offset: number, size: AccessSize): bigint | null {
    if (size > 4 || offset >= 8) return offset < this.size && size <= 4 ? 0n : null;
    return BigInt(this.lock.with(() => this.readReg(offset)));
  }

  write(offset: number, size: AccessSize, value: bigint): boolean {
    if (size > 4) return false;
    if (offset >= 8) return offset < this.size;
    const v = Number(value & 0xffn);
    if (offset === 0 && (Atomics.load(this.s, S_LCR) & LCR_DLAB) === 0) {
      // THR: hand the byte to the console before taking the UART lock. The
      // console may block this hart while its ring is full, and the main
      // thread that drains it also takes the UART lock (rxNotify): holding
      // the lock across the wait could deadlock the two.
      if ((Atomics.load(this.s, S_MCR) & MCR_LOOP) === 0) this.console.writeByte(v);
      this.lock.with(() => {
        // Transmission completes at once: THR is empty again, which is a THRE interrupt when enabled.
        this.s[S_THR_IPENDING] = 1;
        this.update();
      });
      return true;
    }
    this.lock.with(() => this.writeReg(offset, v));
    return true;
  }

  /** Called by the main thread after it queued host input into the RX ring: re-evaluate the RX interrupt. */
  rxNotify(): void {
    this.lock.with(() => this.update());
  }

  private readReg(offset: number): number {
    const s = this.s;
    const dlab = (s[S_LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case 0: {
        if (dlab) return s[S_DLL]!;
        if ((s[S_MCR]! & MCR_LOOP) !== 0) return 0; // loopback bytes are not modelled; nothing arrives
        const b = this.console.readByte();
        this.update();
        return b < 0 ? 0 : b;
      }
      case 1:
        return dlab ? s[S_DLM]! : s[S_IER]!;
      case 2: {
        const iir = this.iir();
        // Reading IIR while it reports THRE clears that interrupt (PC16550D table 4).
        if ((iir & 0x0f) === IIR_THRI) {
          s[S_THR_IPENDING] = 0;
          this.update();
        }
        return iir;
      }
      case 3:
        return s[S_LCR]!;
      case 4:
        return s[S_MCR]!;
      case 5:
        return LSR_THRE | LSR_TEMT | (this.dataReady() ? LSR_DR : 0);
      case 6: {
        const mcr = s[S_MCR]!;
        if ((mcr & MCR_LOOP) !== 0) {
          // Loopback: the modem outputs feed the modem inputs (PC16550D §8.6).
          return ((mcr & MCR_OUT2) !== 0 ? MSR_DCD : 0) | ((mcr & MCR_OUT1) !== 0 ? MSR_RI : 0)
            | ((mcr & MCR_DTR) !== 0 ? MSR_DSR : 0) | ((mcr & MCR_RTS) !== 0 ? MSR_CTS : 0);
        }
        return MSR_DCD | MSR_DSR | MSR_CTS; // a connected terminal, no delta bits
      }
      default:
        return s[S_SCR]!;
    }
  }

  private writeReg(offset: number, v: number): void {
    const s = this.s;
    const dlab = (s[S_LCR]! & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) s[S_DLL] = v; // THR writes are handled in write()
        return;
      case 1: {
        if (dlab) {
          s[S_DLM] = v;
          return;
        }
        const old = s[S_IER]!;
        s[S_IER] = v & 0x0f;
        // Enabling ETBEI while THR is empty raises a THRE interrupt (as QEMU does).
        if ((v & IER_THRI) !== 0 && (old & IER_THRI) === 0) s[S_THR_IPENDING] = 1;
        if ((v & IER_THRI) === 0) s[S_THR_IPENDING] = 0;
        this.update();
        return;
      }
      case 2:
        // FCR "clear RX FIFO" is a no-op: bytes still in the host ring have not reached the FIFO yet.
        s[S_FCR] = v & 0xc9;
        this.update();
        return;
      case 3:
        s[S_LCR] = v;
        return;
      case 4:
        s[S_MCR] = v & 0x1f;
        this.update();
        return;
      case 5:
      case 6:
        return; // LSR and MSR writes are ignored (factory test registers)
      default:
        s[S_SCR] = v;
    }
  }

  private dataReady(): boolean {
    return (this.s[S_MCR]! & MCR_LOOP) === 0 && this.console.rxReady();
  }

  /** Interrupt identification by priority (PC16550D table 4): line status, RX data, THRE, modem status. */
  private iir(): number {
    const ier = this.s[S_IER]!;
    const fifo = (this.s[S_FCR]! & FCR_ENABLE) !== 0 ? IIR_FIFO : 0;
    if ((ier & IER_RDI) !== 0 && this.dataReady()) return IIR_RDI | fifo;
    if ((ier & IER_THRI) !== 0 && this.s[S_THR_IPENDING] !== 0) return IIR_THRI | fifo;
    // No line errors are ever reported and the modem status never changes: no RLS or MS interrupts.
    return IIR_NO_INT | fifo;
  }

  private update(): void {
    this.plic.setLevel(IRQ.uart0, (this.iir() & IIR_NO_INT) === 0);
  }
}
