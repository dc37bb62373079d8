// `pnpm bench iommu-map [--pairs N] [--live K]`: what strict-mode DMA mapping costs in
// requests to vmm-iommu. Linux's virtio-iommu driver sends one MAP per
// dma_map and one UNMAP per dma_unmap and waits for each (viommu_sync_req),
// so a request's round trip over vhost-user is the price of every mapped
// I/O buffer. Measured: N synchronous MAP+UNMAP pairs against the real
// vmm-iommu process; reference, in the same run: the same number of
// same-sized round trips against core's echo back-end (a device that does
// no work), i.e. the bare vhost-user round trip. ratio = vmm-iommu
// requests/s ÷ echo requests/s.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createLogger, DeviceProcess, VhostUserDriver, VhostUserFrontend } from '@vmm/core';
import { VIRTIO_IOMMU_F_BYPASS_CONFIG, VIRTIO_IOMMU_F_DOMAIN_RANGE, VIRTIO_IOMMU_F_INPUT_RANGE, VIRTIO_IOMMU_F_MAP_UNMAP, VIRTIO_IOMMU_F_PROBE, bit } from '@vmm/iommu';
import { attachReq, mapReq, unmapReq } from '@vmm/iommu/testing';

const IOMMU_MAIN = fileURLToPath(new URL('../packages/iommu/src/main.ts', import.meta.url));
const ECHO_MAIN = fileURLToPath(new URL('../packages/core/src/testing/echo-backend.ts', import.meta.url));
const log = createLogger('iommu-map-bench', undefined, 'warn');

// virtio 1.2 §5.13.3: the features Linux's driver negotiates.
const FEATURES = bit(VIRTIO_IOMMU_F_INPUT_RANGE) | bit(VIRTIO_IOMMU_F_DOMAIN_RANGE) | bit(VIRTIO_IOMMU_F_MAP_UNMAP) | bit(VIRTIO_IOMMU_F_BYPASS_CONFIG) | bit(VIRTIO_IOMMU_F_PROBE);

class SyncDriver {
  readonly d: VhostUserDriver;
  readonly buf: number;
  constructor(d: VhostUserDriver) {
    this.d = d;
    this.buf = d.alloc(4096, 64);
  }
  /** One request, waited for; returns the first byte of the 4-byte tail. */
  async send(r: Uint8Array): Promise<number> {
    this.d.mem.write(this.buf, r);
    const q = this.d.queue(0);
    q.submit([{ addr: this.buf, len: r.length, write: false }, { addr: this.buf + 1024, len: 4, write: true }]);
    await q.wait();
    return this.d.mem.readU8(this.buf + 1024);
  }
}

async function serve(args: string[], name: string): Promise<DeviceProcess> {
  const p = new DeviceProcess({ name, args, env: { VMM_LOG_LEVEL: 'warn' }, log });
  await p.start();
  return p;
}

export async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { pairs: { type: 'string', default: '5000' }, live: { type: 'string', default: '256' } } });
  const pairs = Number(values.pairs);
  if (!Number.isInteger(pairs) || pairs < 10) throw new Error(`--pairs ${values.pairs}: expected an integer ≥ 10`);
  // Mappings kept alive meanwhile (a disk at QD32 with a few segments each, rings): MAP checks overlaps against them.
  const live = Number(values.live);
  if (!Number.isInteger(live) || live < 0 || live > 60000) throw new Error(`--live ${values.live}: expected an integer from 0 to 60000`);
  const dir = mkdtempSync(join(tmpdir(), 'vmm-bench-iommu-'));
  try {
    const iommuSock = join(dir, 'iommu.sock');
    const iommu = await serve([IOMMU_MAIN, '--socket', iommuSock, '--endpoints', '1', '--table', join(dir, 'table')], 'vmm-iommu');
    const echoSock = join(dir, 'echo.sock');
    const echo = await serve([ECHO_MAIN, '--socket', echoSock, '--queues', '2'], 'echo');
    try {
      const opts = { queues: 2, queueSize: 256, ramSize: 4 << 20 };
      const io = new SyncDriver(await VhostUserDriver.start(VhostUserFrontend.connect(iommuSock, { log }), { ...opts, deviceFeatures: FEATURES }));
      const ec = new SyncDriver(await VhostUserDriver.start(VhostUserFrontend.connect(echoSock, { log }), opts));
      if ((await io.send(attachReq(1, 1))) !== 0) throw new Error('ATTACH failed');
      for (let i = 0; i < live; i++) {
        if ((await io.send(mapReq(1, 0x8000_0000 + i * 0x1000, 0x8000_0000 + i * 0x1000 + 0xfff, 0x8000_0000))) !== 0) throw new Error(`live MAP ${i} failed`);
      }
      // Each pair maps one 4 KiB page at a fresh IOVA (as the IOVA allocator hands them out) and unmaps it.
      const iova = (i: number): number => 0x1000_0000 + (i % 65536) * 0x1000;
      const map = (i: number): Uint8Array => mapReq(1, iova(i), iova(i) + 0xfff, 0x8000_0000);
      const unmap = (i: number): Uint8Array => unmapReq(1, iova(i), iova(i) + 0xfff);
      const warm = Math.min(500, pairs);
      for (let i = 0; i < warm; i++) { await io.send(map(i)); await io.send(unmap(i)); await ec.send(map(i)); await ec.send(unmap(i)); }
      let t = performance.now();
      for (let i = 0; i < pairs; i++) {
        if ((await io.send(map(i))) !== 0 || (await io.send(unmap(i))) !== 0) throw new Error(`pair ${i} failed`);
      }
      const iommuSecs = (performance.now() - t) / 1000;
      t = performance.now();
      for (let i = 0; i < pairs; i++) { await ec.send(map(i)); await ec.send(unmap(i)); }
      const echoSecs = (performance.now() - t) / 1000;
      const iommuRps = (2 * pairs) / iommuSecs;
      const echoRps = (2 * pairs) / echoSecs;
      console.log(`vmm-iommu (${live} other mappings live): ${pairs} synchronous MAP+UNMAP pairs in ${iommuSecs.toFixed(2)} s: ${Math.round(iommuRps)} requests/s, ${(1e6 / iommuRps).toFixed(1)} µs per request`);
      console.log(`echo back-end (bare vhost-user round trip): ${Math.round(echoRps)} requests/s, ${(1e6 / echoRps).toFixed(1)} µs per request`);
      console.log(JSON.stringify({ bench: 'iommu-map', pairs, live, iommu_rps: Math.round(iommuRps), echo_rps: Math.round(echoRps), ratio: Number((iommuRps / echoRps).toFixed(3)) }));
      io.d.close();
      ec.d.close();
    } finally {
      await iommu.stop();
      await echo.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
