// The physical-address bus seen by a hart for everything that is not RAM.
//
// RAM accesses never come here: the hart core reads guest RAM directly from
// its shared memory. A hart calls the bus for MMIO (device registers), on
// whichever worker thread it runs; device models keep their state in
// SharedArrayBuffers so that every hart's copy of a model sees one device.

export type AccessSize = 1 | 2 | 4 | 8;

export interface MmioDevice {
  readonly name: string;
  readonly base: number;
  readonly size: number;
  /** Read `size` bytes at `offset` within the device window. null = access fault. */
  read(offset: number, size: AccessSize, hart: number): bigint | null;
  /** Write; false = access fault. */
  write(offset: number, size: AccessSize, value: bigint, hart: number): boolean;
}

export interface PhysBus {
  /** Zero-extended value, or null for an access fault (nothing mapped there). */
  load(paddr: number, size: AccessSize, hart: number): bigint | null;
  /** false for an access fault. */
  store(paddr: number, size: AccessSize, value: bigint, hart: number): boolean;
}

/** A hart's integer registers as the SBI implementation sees them at an ECALL. */
export interface HartRegs {
  readonly hartId: number;
  x(i: number): bigint;
  setX(i: number, v: bigint): void;
  /** Guest-physical memory, for SBI calls that pass buffers (DBCN). null if out of RAM. */
  readPhys(paddr: bigint, len: number): Uint8Array | null;
  writePhys(paddr: bigint, data: Uint8Array): boolean;
}

/**
 * What the hart does after an SBI call returns (a0/a1 already set):
 * 'continue' — resume at the instruction after ECALL;
 * 'stop' — this hart was stopped (HSM hart_stop): park until HSM start;
 * 'shutdown' — the machine is going down (SRST): stop running.
 */
export type SbiOutcome = 'continue' | 'stop' | 'shutdown';

export interface SbiHandler {
  call(regs: HartRegs): SbiOutcome;
}
