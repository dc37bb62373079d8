// vmm-blk: the vhost-user-blk back-end process. One process per disk; it
// opens the image, listens on the vhost-user socket and serves one
// front-end at a time (our orchestrator, QEMU, or a benchmark driver),
// accepting the next one when a front-end leaves or restarts.

import { basename } from 'node:path';
import { endpointOptions, openEndpoint, type EndpointOptions } from '@vmm/iommu';
import { DeviceOptionError, deviceUsage, IoRing, isMainModule, onControlMessage, parseDeviceArgv, runDeviceMain, serveVhostUser, type DeviceMain } from '@vmm/core';
import { BlkDevice } from './device.ts';
import { DmaFaults } from './dma-faults.ts';
import { FaultInjectingImage } from './faults.ts';
import type { BlockImage } from './image.ts';
import { BLK_OPTIONS } from './kind.ts';
import { openImage, Qcow2Image, type ImageFormat } from './qcow2.ts';
import { BLOCKSTATS_QUERY } from './stats.ts';

// Reads and writes run on libuv's pool; its default of 4 threads caps the
// requests truly in flight. Must be set before the first fs call.
process.env.UV_THREADPOOL_SIZE ??= '8';

const USAGE = deviceUsage('vmm-blk', 'Serves a raw or qcow2 image as a vhost-user-blk device (virtio 1.2 §5.2).', BLK_OPTIONS);

export interface BlkOptions {
  socket: string;
  image: string;
  format: ImageFormat | undefined;
  readOnly: boolean;
  queues: number;
  serial: string;
  id: string;
  logLevel: string;
  /** Behind vmm-iommu: its table file, this disk's endpoint id and reader slot. */
  iommu: EndpointOptions | null;
  /** Translate through the front-end's vhost-user IOTLB messages instead (its own vIOMMU). */
  iotlb: boolean;
}

/**
 * Parse the command line with the kind's option schema (the orchestrator's
 * `--device virtio-blk,…` and QMP device_add use the same one); throws
 * DeviceOptionError naming the bad option and value. Returns null for --help.
 */
export function parseBlkArgs(argv: string[]): BlkOptions | null {
  const f = parseDeviceArgv('virtio-blk', BLK_OPTIONS, argv);
  if (f === null) return null;
  const o = f.options;
  const image = String(o.file);
  if (o.iotlb === true && o['iommu-table'] !== undefined) throw new DeviceOptionError('virtio-blk: iotlb and iommu-table are two ways of translating DMA; give one');
  return {
    socket: f.socket,
    image,
    format: o.format as ImageFormat | undefined,
    readOnly: o.readonly === true,
    queues: Number(o.queues),
    serial: String(o.serial ?? ''),
    id: f.id ?? basename(image),
    logLevel: f.logLevel,
    iommu: endpointOptions('virtio-blk', o),
    iotlb: o.iotlb === true,
  };
}

/**
 * The image stack vmm-blk serves: the opened image (raw or qcow2) inside the
 * fault-injection layer, inert until the orchestrator's inject-fault arms it.
 * One function so the process and its tests build the very same stack.
 */
export async function openServedImage(opts: Pick<BlkOptions, 'image' | 'format' | 'readOnly'>): Promise<{ image: BlockImage; served: FaultInjectingImage }> {
  const image = await openImage(opts.image, { format: opts.format, readOnly: opts.readOnly });
  return { image, served: new FaultInjectingImage(image) };
}

const BLK_MAIN: DeviceMain<BlkOptions> = {
  command: 'vmm-blk',
  role: 'blk',
  usage: USAGE,
  parse: parseBlkArgs,
  id: (o) => o.id,
  async start(opts, log) {
    const { image, served: faulty } = await openServedImage(opts);
    const dmaFaults = new DmaFaults();
    const device = new BlkDevice(faulty, {
      dmaFaults,
      queues: opts.queues,
      serial: opts.serial,
      discardAlignment: image instanceof Qcow2Image ? image.header.clusterSize : 4096,
      log,
    });
    const dma = opts.iommu ? openEndpoint(opts.iommu) : undefined;
    // The orchestrator's control channel: queries (query-blockstats) and fault injection.
    onControlMessage((m) => {
      if (m.query === BLOCKSTATS_QUERY.query) return device.stats.snapshot();
      // IOMMU faults: asked with a request (the orchestrator waits for their answers); a refusal is the error it gets.
      if (m.fault === 'stray-dma' || m.fault === 'unmap-race' || m.query === 'unmap-race-result') {
        if (!dma) throw new Error(`this disk is not behind an IOMMU (no --iommu-table): ${String(m.fault ?? m.query)} does not apply`);
        if (m.fault === 'stray-dma') {
          const what = dmaFaults.armStray(Number(m.iova));
          log.warn({ fault: m }, what);
          return { armed: what };
        }
        if (m.fault === 'unmap-race') return dmaFaults.armRace(Number(m.holdMs), m.phase === 'before-translate' ? 'before-translate' : 'after-translate');
        return dmaFaults.raceResult();
      }
      try {
        log.warn({ fault: m }, faulty.control(m));
      } catch (e) {
        log.error({ fault: m, err: (e as Error).message }, 'bad fault-injection command');
      }
      return undefined;
    });
    const backend = serveVhostUser(device, { socketPath: opts.socket, log, ...(dma ? { dma } : {}), iotlb: opts.iotlb });
    const ring = IoRing.shared();
    const io = ring ? `io_uring (${ring.entries} entries)` : `thread pool (io_uring: ${IoRing.unavailableReason})`;
    return {
      serving: { image: opts.image, format: image instanceof Qcow2Image ? 'qcow2' : 'raw', capacity: image.capacity, readOnly: image.readOnly, queues: opts.queues, io },
      ready: { socket: opts.socket },
      vhostUser: backend,
      stop: () => backend.close(),
    };
  },
};

if (isMainModule(import.meta)) await runDeviceMain(BLK_MAIN);
