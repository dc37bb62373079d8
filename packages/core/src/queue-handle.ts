// The VirtqueueHandle a device sees, shared by every transport (the
// vhost-user back-end, the in-process harness): a split ring plus optional
// inflight tracking and batched, EVENT_IDX-aware notification.

import type { Logger } from 'pino';
import type { VirtqueueHandle } from './device.ts';
import type { DmaTranslator, GuestMemory } from './memory.ts';
import type { InflightQueue } from './vhost-user/inflight.ts';
import { isIotlbMiss } from './vhost-user/iotlb.ts';
import { VirtqueueError, type DescriptorChain, type SplitQueue } from './virtqueue.ts';

export interface QueueHandleOptions {
  index: number;
  mem: GuestMemory;
  queue: SplitQueue;
  /** Inflight tracking (vhost-user INFLIGHT_SHMFD) and the heads to resubmit first. */
  inflight?: InflightQueue | null;
  resubmit?: number[];
  log: Logger;
  /** Signal the driver (write the call eventfd, raise the interrupt). */
  notify: () => void;
  /** Every popped chain has completed. */
  onIdle?: (h: QueueHandle) => void;
  /** The ring is inconsistent (avail.idx ran away): the device needs a reset. */
  onBroken?: () => void;
  /** Behind an IOMMU: every chain is a request from before it is parsed until it completes (DmaTranslator). */
  dma?: DmaTranslator;
}

export class QueueHandle implements VirtqueueHandle {
  /** Chains refused as malformed since the queue started (given back to the driver unprocessed). */
  malformed = 0;
  readonly index: number;
  readonly size: number;
  readonly mem: GuestMemory;
  readonly q: SplitQueue;
  private readonly inflight: InflightQueue | null;
  private readonly resubmit: number[];
  private readonly o: QueueHandleOptions;
  private flushScheduled = false;
  /** Heads popped and not completed, each with the avail index it was popped at (-1: resubmitted from the inflight region). */
  private readonly popped = new Map<number, number>();
  /** Behind an IOMMU: each popped chain's request token (DmaTranslator.begin). */
  private readonly dmaTokens = new Map<number, number>();
  /** Set when the ring was stopped or the device reset: later completions are dropped. */
  dead = false;
  broken = false;
  notifications = 0;
  /** Completions dropped because their head was not in flight (diagnostics, tests). */
  strayCompletions = 0;

  constructor(o: QueueHandleOptions) {
    this.o = o;
    this.index = o.index;
    this.size = o.queue.size;
    this.mem = o.mem;
    this.q = o.queue;
    this.inflight = o.inflight ?? null;
    this.resubmit = [...(o.resubmit ?? [])];
  }

  get inFlight(): number {
    return this.popped.size;
  }

  get live(): boolean {
    return !this.dead;
  }

  pop(): DescriptorChain | null {
    if (this.dead || this.broken) return null;
    const dma = this.o.dma;
    if (!dma) return this.popChain();
    // The request begins before its descriptors are translated, so an UNMAP
    // made meanwhile waits for it; it ends with complete().
    const token = dma.begin();
    let c: DescriptorChain | null = null;
    try {
      c = this.popChain();
    } finally {
      if (c === null) dma.end(token);
      else this.dmaTokens.set(c.head, token);
    }
    return c;
  }

  private popChain(): DescriptorChain | null {
    while (this.resubmit.length > 0) {
      const head = this.resubmit.shift()!;
      if (this.popped.has(head)) continue;
      try {
        const c = this.q.parse(head);
        this.popped.set(head, -1);
        return c;
      } catch (e) {
        if (isIotlbMiss(e)) {
          // Not the guest's fault: the translation was asked for; this chain is tried again once it arrives.
          this.resubmit.unshift(head);
          return null;
        }
        // The driver still counts this chain as outstanding: give it back (nothing written), or its request never completes.
        this.o.log.warn({ err: e, queue: this.index, head }, 'returning an unparsable inflight chain unprocessed');
        this.inflight?.beforeUsed(head);
        this.q.pushUsed(head, 0);
        this.inflight?.afterUsed(head, this.q.usedIdx);
        this.scheduleFlush();
      }
    }
    for (;;) {
      const at = this.q.lastAvail;
      try {
        const c = this.q.pop();
        if (c === null) return null;
        if (this.popped.has(c.head)) {
          // virtio 1.2 §2.7.13: the driver must not make a buffer available while the device uses it. Starting it a second time would
          // complete one head twice; give the duplicate entry back untouched and keep the first request running.
          this.o.log.warn({ queue: this.index, head: c.head }, 'driver made a head available again while it is in flight');
          this.returnUntracked(c.head);
          continue;
        }
        this.inflight?.begin(c.head);
        this.popped.set(c.head, at);
        return c;
      } catch (e) {
        if (!(e instanceof VirtqueueError)) throw e;
        if (isIotlbMiss(e) && e.head !== undefined) {
          // vhost-user IOTLB: a translation the front-end has not sent yet (it was asked for). Put the chain back, as if
          // never taken; the back-end kicks the queue again when the update arrives.
          this.q.lastAvail = at;
          return null;
        }
        this.o.log.warn({ err: e, queue: this.index }, 'malformed descriptor chain');
        this.malformed++;
        if (e.head !== undefined && e.head < this.size) {
          // Give the chain back untouched so the driver's request completes (with nothing written).
          this.returnUntracked(e.head);
        } else {
          // The ring itself is inconsistent: stop using it until the driver resets the device.
          this.broken = true;
          this.o.onBroken?.();
          return null;
        }
      }
    }
  }

  /**
   * Return a chain that never became a request (malformed, or a duplicate
   * of a head in flight) with nothing written. Its avail entry was consumed,
   * so a used entry keeps avail = used + inflight, which is what inflight
   * recovery counts on; its inflight flag (if any belongs to the running
   * request) is left alone.
   */
  private returnUntracked(head: number): void {
    this.inflight?.beforeUntrackedUsed();
    this.q.pushUsed(head, 0);
    this.inflight?.afterUntrackedUsed(this.q.usedIdx);
    this.scheduleFlush();
  }

  /** The request of chain `head` is over (completed, given back, or its queue stopped). */
  private endDma(head: number): void {
    const token = this.dmaTokens.get(head);
    if (token === undefined) return;
    this.dmaTokens.delete(head);
    this.o.dma!.end(token);
  }

  available(want = 1): number {
    if (this.dead || this.broken) return 0;
    const n = this.resubmit.length + this.q.pending();
    if (n >= want) return n;
    this.q.armKick();
    return this.resubmit.length + this.q.pending();
  }

  pending(): number {
    if (this.dead || this.broken) return 0;
    return this.resubmit.length + this.q.pending();
  }

  setKicks(enabled: boolean): void {
    if (this.dead || this.broken) return;
    this.q.setNotification(enabled);
  }

  /**
   * A request finished. A completion that belongs to no request of this ring
   * generation (the ring was stopped or restarted since it was popped, or the
   * device completed it twice) is dropped with a log line, never thrown: it
   * would otherwise kill the device process from a completion callback.
   */
  complete(head: number, writtenLen: number): void {
    if (this.dead) {
      this.endDma(head);
      return;
    }
    if (!this.popped.delete(head)) {
      // Not this ring's request: its DMA token (if that head is in flight now) belongs to the running request, keep it.
      this.strayCompletions++;
      this.o.log.warn({ queue: this.index, head, code: 'ERR_VIRTQ_NOT_IN_FLIGHT' }, 'dropping a completion for a head that is not in flight');
      return;
    }
    this.endDma(head);
    this.inflight?.beforeUsed(head);
    this.q.pushUsed(head, writtenLen);
    this.inflight?.afterUsed(head, this.q.usedIdx);
    this.scheduleFlush();
    if (this.popped.size === 0) this.o.onIdle?.(this);
  }

  /**
   * Give back chains the device holds and will not complete (receive
   * buffers; VirtioDeviceBackend.stopQueue). When they are exactly the last
   * ones taken from the avail ring, the ring is rewound over them, so the
   * next session pops them again as if never taken (the driver cannot have
   * reused those avail slots: they are not used yet). Otherwise each is
   * returned used with length 0 (nothing written), as a malformed chain is.
   */
  giveBack(heads: readonly number[]): void {
    if (this.dead || heads.length === 0) return;
    const held = heads.filter((h) => this.popped.has(h));
    const positions = new Set(held.map((h) => this.popped.get(h)!));
    const last = this.q.lastAvail;
    let tail = positions.size === held.length;
    for (let k = 1; tail && k <= held.length; k++) tail = positions.has((last - k) & 0xffff);
    if (tail) {
      for (const h of held) {
        this.popped.delete(h);
        this.inflight?.forget(h);
        this.endDma(h);
      }
      this.q.lastAvail = (last - held.length) & 0xffff;
    } else {
      for (const h of held) this.complete(h, 0);
    }
    if (this.popped.size === 0) this.o.onIdle?.(this);
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Completions in the same turn share one notification.
    queueMicrotask(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /** Notify the driver if it wants it (virtio 1.2 §2.7.10). */
  flush(): void {
    if (this.dead) return;
    if (this.q.needsNotification()) {
      this.notifications++;
      this.o.notify();
    }
  }
}
