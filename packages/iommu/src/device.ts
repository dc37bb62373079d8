// The virtio-iommu device model (virtio 1.2 §5.13), transport-independent
// (STYLE.md §4-5): features, config space, request queue → parse →
// execute against the shared table, fault reports on the event queue.
// The vhost-user server (main.ts, through @vmm/core) and in-process tests
// drive it alike.

import type { DeviceContext, Logger, VirtioDeviceBackend, VirtqueueHandle } from '@vmm/core';
import { BusyPoll, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VhostUserProtocolFeature, protocolFeatureBit } from '@vmm/core';
import { execute, type IommuLimits, type ReservedRegion } from './execute.ts';
import { parseRequest, writeReply, writeStatus } from './request.ts';
import {
  CFG,
  EVENT_QUEUE,
  FAULT_LEN,
  REQUEST_QUEUE,
  VIRTIO_IOMMU_F_BYPASS_CONFIG,
  VIRTIO_IOMMU_F_DOMAIN_RANGE,
  VIRTIO_IOMMU_F_INPUT_RANGE,
  VIRTIO_IOMMU_F_MAP_UNMAP,
  VIRTIO_IOMMU_F_PROBE,
  VIRTIO_IOMMU_S_OK,
  bit,
} from './spec.ts';
import { READER_SLOTS, summarize, type IommuTable, type RecordedFault, type TableSummary } from './table.ts';

export interface IommuDeviceOptions {
  /** Page granularity (a power of two, ≥ 4096 is what Linux can use). Default 4096. */
  granule?: number;
  /** Inclusive IOVA range offered in input_range. Default [0, 2^48 - 1]. */
  inputRange?: [number, number];
  /** Inclusive domain id range offered in domain_range. Default [1, 65535]. */
  domainRange?: [number, number];
  /** probe_size: bytes of properties a PROBE reply carries. Default 512 (as QEMU). */
  probeSize?: number;
  /** Initial config `bypass` (unattached endpoints reach guest memory untranslated). Default false. */
  bypass?: boolean;
  /** Reserved IOVA regions reported by PROBE for every endpoint (e.g. an MSI doorbell). */
  reserved?: ReservedRegion[];
  /** Highest guest-physical address a mapping may target. Default 2^53 - 1. */
  physEnd?: number;
  /** How long an UNMAP waits for device processes to finish requests using the old translation. Default 5000 ms. */
  graceTimeoutMs?: number;
  /**
   * After the request queue ran empty, busy-poll it this many microseconds
   * (kicks suppressed) before going back to waiting for a kick. Linux
   * sends every MAP and UNMAP synchronously and spins until it completes,
   * and the next one follows within microseconds, so polling saves an
   * eventfd wakeup per request. 0 turns it off. Default POLL_US.
   */
  pollUs?: number;
  log?: Logger;
}

/**
 * Default request-queue polling window (µs): off. Measured on the shared
 * 2-core machine (4 KiB O_DIRECT reads, load 16-30): polling 200 µs made
 * the guest slower (62-73 s against 35-38 s for 2000 reads), since the
 * spinning process takes CPU from the vCPU that is to send the next
 * request. On a host with a core to spare it can pay; `poll-us` sets it.
 */
export const POLL_US = 0;

/** Faults waiting for an event buffer; beyond this the oldest is dropped (§5.13.6.9 "the device can … drop the event"). */
const MAX_PENDING_FAULTS = 256;

export interface IommuCounters {
  requests: number;
  attach: number;
  detach: number;
  map: number;
  unmap: number;
  probe: number;
  errors: number;
  rejected: number;
  faultsReported: number;
  faultsDropped: number;
  graceWaits: number;
  graceTimeouts: number;
}

export class IommuDevice implements VirtioDeviceBackend {
  readonly numQueues = 2;
  /**
   * Requests in flight when this process dies are resubmitted from the
   * inflight region after the restart; execute() makes a replayed request
   * harmless (a MAP already applied, an UNMAP or DETACH already done).
   */
  readonly protocolFeatures = protocolFeatureBit(VhostUserProtocolFeature.INFLIGHT_SHMFD);
  readonly table: IommuTable;
  readonly #opts: Required<Omit<IommuDeviceOptions, 'log' | 'reserved'>> & { reserved: ReservedRegion[] };
  #log: Logger | undefined;
  #features = 0n;
  #generation = 0;
  /** The request queue is being served (a strict UNMAP may be waiting for its grace period). */
  #busy = false;
  #again: VirtqueueHandle | null = null;
  #eventq: VirtqueueHandle | null = null;
  readonly #pendingFaults: RecordedFault[] = [];
  readonly counters: IommuCounters = { requests: 0, attach: 0, detach: 0, map: 0, unmap: 0, probe: 0, errors: 0, rejected: 0, faultsReported: 0, faultsDropped: 0, graceWaits: 0, graceTimeouts: 0 };

  constructor(table: IommuTable, options: IommuDeviceOptions = {}) {
    this.table = table;
    const granule = options.granule ?? 4096;
    if (!Number.isInteger(Math.log2(granule)) || granule < 1) throw new RangeError(`granule ${granule} is not a power of two`);
    this.#opts = {
      granule,
      inputRange: options.inputRange ?? [0, 2 ** 48 - 1],
      domainRange: options.domainRange ?? [1, 65535],
      probeSize: options.probeSize ?? 512,
      bypass: options.bypass ?? false,
      reserved: options.reserved ?? [],
      physEnd: options.physEnd ?? Number.MAX_SAFE_INTEGER,
      graceTimeoutMs: options.graceTimeoutMs ?? 5000,
      pollUs: options.pollUs ?? POLL_US,
    };
    // Core's BusyPoll (vhost-net's busyloop): kicks off while polling, on again after and one more look.
    this.#poll = this.#opts.pollUs > 0
      ? new BusyPoll(this.#opts.pollUs, {
        step: () => this.#pollStep(),
        enter: () => this.#requestq?.setKicks(false),
        leave: () => {
          const q = this.#requestq;
          if (q === null) return;
          q.setKicks(true);
          this.#pollStep();
        },
      })
      : null;
    this.#log = options.log;
  }

  /**
   * Offered (§5.13.3): INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE,
   * BYPASS_CONFIG. Not offered: BYPASS (superseded by BYPASS_CONFIG, "new
   * devices SHOULD NOT offer" it) and MMIO (no MSI doorbell to map on this
   * platform: the PLIC takes wired interrupts).
   */
  get features(): bigint {
    return (
      bit(VIRTIO_IOMMU_F_INPUT_RANGE) |
      bit(VIRTIO_IOMMU_F_DOMAIN_RANGE) |
      bit(VIRTIO_IOMMU_F_MAP_UNMAP) |
      bit(VIRTIO_IOMMU_F_PROBE) |
      bit(VIRTIO_IOMMU_F_BYPASS_CONFIG) |
      VIRTIO_F_VERSION_1 |
      VIRTIO_F_EVENT_IDX |
      VIRTIO_F_INDIRECT_DESC
    );
  }

  /** struct virtio_iommu_config (§5.13.4). `bypass` is read from the table: it survives a restart of this process. */
  readConfig(): Uint8Array {
    const b = new Uint8Array(CFG.size);
    const v = new DataView(b.buffer);
    v.setBigUint64(CFG.pageSizeMask, ~BigInt(this.#opts.granule - 1) & 0xffff_ffff_ffff_ffffn, true);
    v.setBigUint64(CFG.inputStart, BigInt(this.#opts.inputRange[0]), true);
    v.setBigUint64(CFG.inputEnd, BigInt(this.#opts.inputRange[1]), true);
    v.setUint32(CFG.domainStart, this.#opts.domainRange[0], true);
    v.setUint32(CFG.domainEnd, this.#opts.domainRange[1], true);
    v.setUint32(CFG.probeSize, this.#opts.probeSize, true);
    b[CFG.bypass] = this.table.bypass ? 1 : 0;
    return b;
  }

  /** Only `bypass` is writable, and only with BYPASS_CONFIG negotiated (§5.13.4 driver requirements). */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset !== CFG.bypass || data.length !== 1 || (this.#features & bit(VIRTIO_IOMMU_F_BYPASS_CONFIG)) === 0n) {
      this.#log?.warn({ offset, len: data.length }, 'config write outside the bypass field (or without BYPASS_CONFIG) ignored');
      return;
    }
    const value = data[0]!;
    if (value > 1) {
      this.#log?.warn({ value }, 'config bypass write of a value other than 0 or 1 ignored');
      return;
    }
    if (this.table.bypass !== (value === 1)) {
      this.table.setBypass(value === 1);
      this.table.bump();
    }
  }

  activate(ctx: DeviceContext): void {
    this.#log ??= ctx.log;
    this.#features = ctx.features;
    this.#log.info({ features: `0x${ctx.features.toString(16)}`, endpoints: this.table.endpointIds() }, 'device activated');
  }

  limits(): IommuLimits {
    return {
      granule: this.#opts.granule,
      inputStart: this.#opts.inputRange[0],
      inputEnd: this.#opts.inputRange[1],
      domainStart: this.#opts.domainRange[0],
      domainEnd: this.#opts.domainRange[1],
      domainRangeNegotiated: (this.#features & bit(VIRTIO_IOMMU_F_DOMAIN_RANGE)) !== 0n,
      bypassConfigNegotiated: (this.#features & bit(VIRTIO_IOMMU_F_BYPASS_CONFIG)) !== 0n,
      physEnd: this.#opts.physEnd,
      reserved: this.#opts.reserved,
    };
  }

  processQueue(q: VirtqueueHandle): void {
    if (q.index === EVENT_QUEUE) {
      this.#eventq = q;
      this.deliverFaults();
      return;
    }
    if (q.index !== REQUEST_QUEUE) return;
    if (this.#busy) {
      this.#again = q;
      return;
    }
    const before = this.counters.requests;
    this.#requestq = q;
    void this.#serve(q);
    // Poll only after a wake-up that found requests: a kick for one that polling already took finds none.
    if (this.counters.requests !== before) this.#poll?.run();
  }

  /** The request queue, for polling (pollUs). */
  #requestq: VirtqueueHandle | null = null;
  readonly #poll: BusyPoll | null;

  /** One polling step: serve what the driver added meanwhile (completions signalled at once, not at the end of the turn). */
  #pollStep(): boolean {
    const q = this.#requestq;
    if (q === null || !q.live || this.#busy || q.pending() === 0) return false;
    void this.#serve(q);
    q.flush();
    return true;
  }

  /**
   * Requests in ring order. A request that took translations away (UNMAP,
   * DETACH, re-ATTACH) completes only after the grace period — every
   * device process done with requests translated before it — and the next
   * requests wait for it, so the driver sees them in order.
   */
  async #serve(q: VirtqueueHandle): Promise<void> {
    this.#busy = true;
    const gen = this.#generation;
    try {
      for (let c = q.pop(); c !== null; c = q.pop()) {
        this.counters.requests++;
        const parsed = parseRequest(q.mem, c, this.#opts.probeSize);
        if ('reject' in parsed) {
          this.counters.rejected++;
          this.#log?.warn({ reason: parsed.reject, head: c.head }, 'rejected request chain');
          q.complete(c.head, 0);
          continue;
        }
        const res = execute(this.table, parsed.req, this.limits());
        if (parsed.req.type !== 'error') this.counters[parsed.req.type]++;
        if (parsed.req.type === 'map' || parsed.req.type === 'unmap') this.table.countRequest(parsed.req.type);
        if (res.status !== VIRTIO_IOMMU_S_OK) {
          this.counters.errors++;
          this.#log?.warn({ request: parsed.req.type, status: res.status, reason: res.reason }, 'request failed');
        }
        if (res.invalidated !== undefined) await this.#grace(res.invalidated);
        if (gen !== this.#generation) return;
        if (res.properties) writeReply(parsed.reply, 0, res.properties);
        writeStatus(parsed.reply, res.status);
        q.complete(c.head, parsed.reply.writableLen);
      }
    } finally {
      this.#busy = false;
    }
    const again = this.#again;
    this.#again = null;
    if (again && gen === this.#generation) void this.#serve(again);
  }

  /**
   * An UNMAP the host makes in an endpoint's domain, of the whole mapping
   * that holds `iova` (fault injection: `inject-fault kind=unmap-race`).
   * It goes the way a guest's UNMAP goes — execute() against the table,
   * then the strict grace period — and resolves once it is complete, with
   * when it was applied and when it completed (CLOCK_MONOTONIC ns, which
   * device processes use too) and how long the grace period held it.
   * Throws, naming the value, when the endpoint is unknown, detached, or
   * has no mapping there.
   */
  async unmapFor(endpoint: number, iova: number): Promise<{ domain: number; virtStart: number; virtEnd: number; physStart: number; appliedNs: number; completedNs: number; graceWaitMs: number }> {
    const index = this.table.endpointIndex(endpoint);
    if (index < 0) throw new RangeError(`endpoint ${endpoint} is not managed by this IOMMU`);
    const d = this.table.endpointDomain(index);
    if (d < 0) throw new RangeError(`endpoint ${endpoint} is not attached to a domain`);
    const m = this.table.lookup(d, iova);
    if (!m) throw new RangeError(`endpoint ${endpoint} has no mapping at IOVA 0x${iova.toString(16)}`);
    const domain = this.table.domainState(d).id;
    const res = execute(this.table, { type: 'unmap', domain, virtStart: BigInt(m.virtStart), virtEnd: BigInt(m.virtEnd), reservedNonZero: false }, this.limits());
    this.counters.unmap++;
    if (res.status !== VIRTIO_IOMMU_S_OK) throw new Error(`UNMAP [0x${m.virtStart.toString(16)}, 0x${m.virtEnd.toString(16)}] in domain ${domain} failed: ${res.reason ?? res.status}`);
    const appliedNs = Number(process.hrtime.bigint());
    const t0 = Date.now();
    if (res.invalidated !== undefined) await this.#grace(res.invalidated);
    const completedNs = Number(process.hrtime.bigint());
    this.#log?.warn({ fault: 'unmap', endpoint, domain, virtStart: m.virtStart, virtEnd: m.virtEnd, graceWaitMs: Date.now() - t0 }, 'host UNMAP complete');
    return { domain, virtStart: m.virtStart, virtEnd: m.virtEnd, physStart: m.physStart, appliedNs, completedNs, graceWaitMs: Date.now() - t0 };
  }

  /** Waits until no reader slot holds a request begun before `version` (strict invalidation). */
  async #grace(version: number): Promise<void> {
    if (this.table.quiescent(version)) return;
    this.counters.graceWaits++;
    const deadline = Date.now() + this.#opts.graceTimeoutMs;
    let checked = 0;
    while (!this.table.quiescent(version)) {
      // Every 50 ms: a reader that died mid-request holds its slot forever.
      if (Date.now() - checked > 50) {
        checked = Date.now();
        const gone = this.table.releaseDeadReaders(version);
        if (gone.length > 0) {
          this.#log?.warn({ version, deadPids: gone }, 'released the reader slots of device processes that died in a request');
          continue;
        }
      }
      if (Date.now() > deadline) {
        this.counters.graceTimeouts++;
        this.#log?.error({ version, timeoutMs: this.#opts.graceTimeoutMs, readers: READER_SLOTS }, 'a device process kept an old translation in use past the grace timeout; completing the request anyway');
        return;
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Queues a fault for the event queue (faults recorded in the table are taken by pollFaults()). */
  reportFault(f: RecordedFault): void {
    if (this.#pendingFaults.length >= MAX_PENDING_FAULTS) {
      this.#pendingFaults.shift();
      this.counters.faultsDropped++;
    }
    this.#pendingFaults.push(f);
    this.deliverFaults();
  }

  /** Takes the faults device processes recorded in the table and reports them. */
  pollFaults(): number {
    const { faults, lost } = this.table.takeFaults();
    this.counters.faultsDropped += lost;
    for (const f of faults) this.reportFault(f);
    return faults.length;
  }

  /** Writes pending faults into event buffers (struct virtio_iommu_fault, §5.13.6.9). */
  deliverFaults(): void {
    const q = this.#eventq;
    if (!q) return;
    while (this.#pendingFaults.length > 0) {
      const c = q.pop();
      if (!c) return;
      if (c.writableLen < FAULT_LEN || c.readableLen !== 0) {
        // "The device SHOULD NOT use multiple buffers to describe it": a too small buffer goes back unused.
        this.#log?.warn({ writable: c.writableLen, readable: c.readableLen }, 'event buffer cannot hold a fault report; returned unused');
        q.complete(c.head, 0);
        continue;
      }
      const f = this.#pendingFaults.shift()!;
      const b = new Uint8Array(FAULT_LEN);
      const v = new DataView(b.buffer);
      b[0] = f.reason;
      v.setUint32(4, f.flags, true);
      v.setUint32(8, f.endpoint, true);
      v.setBigUint64(16, BigInt(f.address), true);
      try {
        let o = 0;
        for (const s of c.writable) {
          if (o >= FAULT_LEN) break;
          const n = Math.min(s.len, FAULT_LEN - o);
          q.mem.write(s.addr, b.subarray(o, o + n));
          o += n;
        }
      } catch (e) {
        this.#log?.warn({ err: e }, 'event buffer is not in guest memory; returned unused');
        q.complete(c.head, 0);
        continue;
      }
      this.counters.faultsReported++;
      q.complete(c.head, FAULT_LEN);
    }
  }

  /**
   * The driver session is over (connection lost, or the front-end starts a
   * new session). Requests in flight are dropped; the domains and mappings
   * stay in the table: the front-end reconnecting after this process was
   * restarted replays the session and the guest's DMA must keep working.
   * A reset by the driver comes as deviceReset() first.
   */
  reset(): void {
    this.#generation++;
    this.#requestq = null;
    this.#busy = false;
    this.#again = null;
    this.#eventq = null;
    this.#features = 0n;
  }

  /**
   * The driver reset the device (RESET_DEVICE from the front-end; §5.13.5:
   * "When the device is reset, endpoints are not attached to any domain"):
   * every domain ends, with its mappings, and faults not yet reported are
   * dropped. reset() follows.
   */
  deviceReset(): void {
    this.#pendingFaults.length = 0;
    this.table.resetDomains();
    this.#log?.info('device reset by the driver: every domain ended');
  }

  /** The table's summary plus this process's request counters. */
  snapshot(): TableSummary & { counters: IommuCounters } {
    return { ...summarize(this.table), counters: { ...this.counters } };
  }
}
