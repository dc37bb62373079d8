// One end of a NIC ↔ switch link: two FrameRings (one per direction) and
// four eventfds (data and space doorbell for each), seen as a NetPort. The
// switch holds one end per attached NIC, the NIC process the other; the
// frames never pass through a socket.

import { closeFd, eventfdCreate, eventfdRead, eventfdWrite, watchReadable, type FdWatch } from '@vmm/core';
import { FrameRing } from './ring.ts';
import type { NetPort } from './port.ts';

export interface LinkEnd {
  /** Ring this end produces into, its data doorbell (we ring it) and its space doorbell (we wait on it). */
  tx: FrameRing;
  txData: number;
  txSpace: number;
  /** Ring this end consumes, its data doorbell (we wait on it) and its space doorbell (we ring it). */
  rx: FrameRing;
  rxData: number;
  rxSpace: number;
}

/**
 * Create both rings and doorbells of a link. Returns the switch's end and the
 * fds to send to the NIC, in the order attachLinkEnd() expects: its tx ring
 * memfd, its rx ring memfd, then txData, txSpace, rxData, rxSpace. The caller
 * closes the two memfds once sent; the eventfds are duplicates the NIC gets.
 */
export function createLink(ringBytes: number, capacity: number): { end: LinkEnd; peerFds: number[]; closeAfterSend: number[] } {
  const up = FrameRing.create(ringBytes, capacity); // NIC → switch
  const down = FrameRing.create(ringBytes, capacity); // switch → NIC
  const [upData, upSpace, downData, downSpace] = [eventfdCreate(), eventfdCreate(), eventfdCreate(), eventfdCreate()];
  return {
    end: { tx: down.ring, txData: downData, txSpace: downSpace, rx: up.ring, rxData: upData, rxSpace: upSpace },
    peerFds: [up.fd, down.fd, upData, upSpace, downData, downSpace],
    closeAfterSend: [up.fd, down.fd],
  };
}

/** The NIC's end from the six fds createLink() gave the switch to send (they are owned by the returned end; ring memfds are closed once mapped). */
export function attachLinkEnd(fds: number[]): LinkEnd {
  if (fds.length !== 6) {
    for (const f of fds) closeFd(f);
    throw new RangeError(`a switch link needs 6 fds, got ${fds.length}`);
  }
  const [txMem, rxMem, txData, txSpace, rxData, rxSpace] = fds as [number, number, number, number, number, number];
  let tx: FrameRing;
  let rx: FrameRing;
  try {
    tx = FrameRing.map(txMem);
  } catch (e) {
    for (const f of [rxMem, txData, txSpace, rxData, rxSpace]) closeFd(f);
    throw e;
  }
  try {
    rx = FrameRing.map(rxMem);
  } catch (e) {
    for (const f of [txData, txSpace, rxData, rxSpace]) closeFd(f);
    throw e;
  }
  return { tx, txData, txSpace, rx, rxData, rxSpace };
}

export class RingPort implements NetPort {
  readonly maxFrame: number;
  readonly end: LinkEnd;
  private readonly watches: FdWatch[];
  private released = false;
  private committed = false;
  private closed = false;
  private polling = false;
  /** False for an end that drops when its ring is full (the switch): it never asks for the space doorbell. */
  private readonly waitsForSpace: boolean;
  onReadable: () => void = () => {};
  onWritable: () => void = () => {};

  constructor(end: LinkEnd, o: { waitForSpace?: boolean } = {}) {
    this.end = end;
    this.waitsForSpace = o.waitForSpace ?? true;
    this.maxFrame = end.tx.capacity;
    this.watches = [
      watchReadable(end.rxData, () => {
        eventfdRead(end.rxData);
        this.onReadable();
      }),
      watchReadable(end.txSpace, () => {
        eventfdRead(end.txSpace);
        this.onWritable();
      }),
    ];
  }

  reserve(): Uint8Array | null {
    return this.closed ? null : this.end.tx.reserve(this.waitsForSpace);
  }

  commit(len: number): void {
    this.end.tx.commit(len);
    this.committed = true;
  }

  peek(): Uint8Array | null {
    return this.closed ? null : this.end.rx.peek(!this.polling);
  }

  /** Frames waiting to be received, read without marking this end asleep (busy-poll). */
  get waiting(): number {
    return this.closed ? 0 : this.end.rx.used;
  }

  setPolling(on: boolean): void {
    this.polling = on;
  }

  release(): void {
    this.end.rx.release();
    this.released = true;
  }

  flush(): void {
    if (this.closed) return;
    // Only after publishing: the far side sleeps on this ring whenever it found it empty, and a doorbell for nothing
    // made each side wake the other after every batch it received (half the eventfd writes in the pps profile).
    if (this.committed) {
      this.committed = false;
      if (this.end.tx.consumerNeedsKick()) eventfdWrite(this.end.txData);
    }
    if (this.released) {
      this.released = false;
      if (this.end.rx.producerNeedsKick()) eventfdWrite(this.end.rxSpace);
    }
  }

  /** Frames the peer wrote with impossible lengths or indices (counted, skipped). */
  get corrupt(): number {
    return this.end.rx.corrupt;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.watches) w.close();
    for (const f of [this.end.txData, this.end.txSpace, this.end.rxData, this.end.rxSpace]) closeFd(f);
    // Views handed out may still be read in this turn; unmap on the next one.
    setImmediate(() => {
      this.end.tx.unmap();
      this.end.rx.unmap();
    });
  }
}
