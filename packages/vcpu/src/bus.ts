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
