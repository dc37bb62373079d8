// The virtio-blk device model, transport-independent (STYLE.md §4, §5):
// feature bits, config space, and chain → request → I/O. The vhost-user
// server (main.ts, through @vmm/core) and in-process tests both drive it.

import { protocolFeatureBit, VhostUserProtocolFeature, type DeviceContext, type GuestMemory, type Logger, type VirtioDeviceBackend, type VirtqueueHandle } from '@vmm/core';
import type { BlockImage } from './image.ts';
import { monotonicNs, type DmaFaults } from './dma-faults.ts';
import { BlkStats } from './stats.ts';
import { executeRequest, parseRequest, type BlkLimits, type ChainBuffers, type ExecuteResult } from './request.ts';
import {
  CFG,
  SECTOR_SIZE,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_OK,
  VIRTIO_F_VERSION_1,
  VIRTIO_RING_F_EVENT_IDX,
  VIRTIO_RING_F_INDIRECT_DESC,
  bit,
} from './spec.ts';

export interface BlkDeviceOptions {
  queues?: number;
  /** Answer to GET_ID: at most 20 bytes (longer ids are cut). */
  serial?: string;
  /** Largest ring the frontend may choose; seg_max is derived from it. */
  maxQueueSize?: number;
  /** Discard granularity hint in bytes (qcow2: the cluster size). */
  discardAlignment?: number;
  log?: Logger;
  /** IOMMU fault injection (stray-dma, unmap-race), inert until armed. */
  dmaFaults?: DmaFaults;
}

/** Sectors per discard/write-zeroes segment we accept: 2 GiB keeps every offset exact in a double. */
const MAX_DWZ_SECTORS = 1 << 22;
const MAX_DWZ_SEG = 32;

export class BlkDevice implements VirtioDeviceBackend {
  readonly image: BlockImage;
  readonly numQueues: number;
  readonly limits: BlkLimits;
  readonly serial: Uint8Array;
  readonly #segMax: number;
  readonly #discardAlignment: number;
  #log: Logger | undefined;
  readonly #dmaFaults: DmaFaults | null;
  /** Bumped by reset(): completions of requests started before it are dropped. */
  #generation = 0;
  /** Requests being executed, all queues together. */
  inFlight = 0;
  /** A write in flight when the process dies must be resubmitted, not lost: vhost-user inflight tracking. */
  readonly protocolFeatures = protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD);
  /** I/O accounting (query-blockstats). */
  readonly stats = new BlkStats();

  constructor(image: BlockImage, options: BlkDeviceOptions = {}) {
    this.image = image;
    this.numQueues = options.queues ?? 1;
    this.serial = new TextEncoder().encode(options.serial ?? '').subarray(0, 20);
    // Two descriptors of a chain are header and status (virtio 1.2 §5.2.4: seg_max).
    this.#segMax = (options.maxQueueSize ?? 128) - 2;
    this.#discardAlignment = Math.max(SECTOR_SIZE, options.discardAlignment ?? 4096);
    this.#log = options.log;
    this.#dmaFaults = options.dmaFaults ?? null;
    const writable = !image.readOnly;
    this.limits = {
      capacitySectors: Math.floor(image.capacity / SECTOR_SIZE),
      readOnly: image.readOnly,
      discard: writable,
      writeZeroes: writable,
      maxDiscardSectors: MAX_DWZ_SECTORS,
      maxDiscardSeg: MAX_DWZ_SEG,
      maxWriteZeroesSectors: MAX_DWZ_SECTORS,
      maxWriteZeroesSeg: MAX_DWZ_SEG,
    };
  }

  /**
   * Device features (virtio 1.2 §5.2.3). Chosen:
   * - SEG_MAX: without it Linux sends one segment per request.
   * - BLK_SIZE 512, FLUSH (writes are cached by the host page cache; flush = fdatasync).
   * - MQ: one kick/call pair per queue, requests of all queues run concurrently.
   * - DISCARD, WRITE_ZEROES (writable images): qcow2 frees or zero-flags clusters.
   * - RO for a read-only image.
   * Not offered: SIZE_MAX (any segment size is served zero-copy),
   * CONFIG_WCE (we have no write-through mode to switch to; with FLUSH and
   * no WCE the driver treats the cache as write-back, which is what it is),
   * GEOMETRY/TOPOLOGY (meaningless here), and RING_RESET.
   */
  get features(): bigint {
    let f = bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_MQ);
    if (this.image.readOnly) f |= bit(VIRTIO_BLK_F_RO);
    else f |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
    return f | bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(VIRTIO_RING_F_INDIRECT_DESC);
  }

  /** struct virtio_blk_config (virtio 1.2 §5.2.4), little-endian, `CFG.size` bytes. */
  config(): Uint8Array {
    const b = new Uint8Array(CFG.size);
    const v = new DataView(b.buffer);
    v.setBigUint64(CFG.capacity, BigInt(this.limits.capacitySectors), true);
    v.setUint32(CFG.segMax, this.#segMax, true);
    v.setUint32(CFG.blkSize, SECTOR_SIZE, true);
    v.setUint16(CFG.numQueues, this.numQueues, true);
    v.setUint32(CFG.maxDiscardSectors, MAX_DWZ_SECTORS, true);
    v.setUint32(CFG.maxDiscardSeg, MAX_DWZ_SEG, true);
    v.setUint32(CFG.discardSectorAlignment, this.#discardAlignment / SECTOR_SIZE, true);
    v.setUint32(CFG.maxWriteZeroesSectors, MAX_DWZ_SECTORS, true);
    v.setUint32(CFG.maxWriteZeroesSeg, MAX_DWZ_SEG, true);
    b[CFG.writeZeroesMayUnmap] = 1;
    return b;
  }

  readConfig(): Uint8Array {
    return this.config();
  }

  activate(ctx: DeviceContext): void {
    this.#log ??= ctx.log;
    this.#log.info({ features: `0x${ctx.features.toString(16)}`, capacity: this.image.capacity, queues: this.numQueues }, 'device activated');
  }

  /**
   * Pop every available chain and start it; each completes on its own when
   * its I/O finishes, so a queue has as many requests in flight as the
   * driver posted (the ring size bounds it). Completions are batched into
   * one call notification by the queue handle.
   */
  processQueue(q: VirtqueueHandle): void {
    const gen = this.#generation;
    for (let c = q.pop(); c !== null; c = q.pop()) {
      const head = c.head;
      this.inFlight++;
      void this.handleChain(q.mem, c).then(
        (res) => {
          this.inFlight--;
          // A stopped queue's handle only ends the request's strict-mode DMA hold (behind an IOMMU its UNMAPs wait for it).
          if (gen === this.#generation || !q.live) q.complete(head, res?.usedLen ?? 0);
        },
        (e: unknown) => {
          // handleChain does not throw on guest input; anything here is our bug: log it, still return the chain.
          this.inFlight--;
          this.#log?.error({ err: e, queue: q.index, head }, 'request handling failed');
          if (gen === this.#generation || !q.live) q.complete(head, 0);
        },
      );
    }
  }

  reset(): void {
    this.#generation++;
  }

  /**
   * Serve one chain: parse, execute, and return the used length, or null
   * for a chain that cannot be answered (returned with length 0). Never
   * throws on guest input.
   */
  async handleChain(mem: GuestMemory, asked: ChainBuffers): Promise<ExecuteResult | null> {
    const f = this.#dmaFaults;
    const race = f?.takeRace(asked) ?? null;
    const stray = f?.stray ?? null;
    const chain = f ? f.displace(asked) : asked;
    if (chain !== asked) this.#log?.warn({ fault: 'stray-dma', iova: `0x${stray!.toString(16)}` }, 'injected stray DMA: this request reaches outside its mappings');
    let resumedNs = 0;
    const hold = async (phase: string): Promise<void> => {
      if (race?.phase !== phase) return;
      this.#log?.warn({ fault: 'unmap-race', phase, iova: `0x${race.held.iova.toString(16)}`, holdMs: race.holdMs }, 'holding the request while its buffer is unmapped');
      await new Promise((r) => setTimeout(r, race.holdMs));
      resumedNs = monotonicNs();
    };
    await hold('before-translate');
    const req = parseRequest(mem, chain, this.limits);
    if (req.type === 'reject') {
      this.#log?.warn({ reason: req.reason }, 'rejected descriptor chain');
      if (race) f!.finishRace({ status: -1, accessesEndedNs: null, resumedNs, error: req.reason });
      return null;
    }
    await hold('after-translate');
    if (req.type === 'error') this.stats.invalid(req.op);
    const accounted = this.stats.start(req);
    const res = await executeRequest(req, this.image, this.serial);
    // The status byte was the request's last access to guest memory.
    if (race) f!.finishRace({ status: res.status, accessesEndedNs: monotonicNs(), resumedNs, ...(res.error !== undefined ? { error: res.error } : {}) });
    if (req.type !== 'error') accounted(res.status === VIRTIO_BLK_S_OK);
    if (res.error !== undefined) this.#log?.warn({ status: res.status, reason: res.error }, 'request failed');
    return res;
  }
}
