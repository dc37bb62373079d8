// A tiny test device for protocol tests: copies each request's readable
// bytes into its writable segments (up to the writable length) and completes
// with the number of bytes written. Requests whose first byte is 0xFF are
// held (never completed) until a request with first byte 0xFE releases them,
// so a test can kill the process with requests in flight. Requests whose
// first byte is 0xFD are parked like a NIC's receive buffers: completed by a
// release too, but handed back by stopQueue instead of being waited for. A
// request whose first byte is 0xFC completes and makes the device ask for a
// reset (DeviceContext.needsReset), as a device that lost its state would.
// A request 0xFB, V completes and stores V at config byte 4, then tells the
// driver the configuration changed (DeviceContext.configChanged). A request
// 0xFA completes and then kills its process (SIGKILL to itself), as a crash
// right after a completion: only for the device run as its own process.
import type { DeviceContext, VirtioDeviceBackend, VirtqueueHandle } from '../device.ts';
import { VIRTIO_F_VERSION_1 } from '../device.ts';
import { pf, ProtocolFeature } from '../vhost-user/protocol.ts';
import type { GuestMemory } from '../memory.ts';
import { MAX_QUEUE_SIZE, type DescriptorChain } from '../virtqueue.ts';

export const ECHO_HOLD = 0xff;
export const ECHO_RELEASE = 0xfe;
export const ECHO_PARK = 0xfd;
export const ECHO_BREAK = 0xfc;
export const ECHO_CONFIG = 0xfb;
export const ECHO_DIE = 0xfa;

export class EchoDevice implements VirtioDeviceBackend {
  readonly features = VIRTIO_F_VERSION_1 | (1n << 0n);
  readonly numQueues: number;
  /** Held requests must survive a crash of the process: the protocol tests exercise inflight resubmission with them. */
  readonly protocolFeatures = pf(ProtocolFeature.INFLIGHT_SHMFD);
  private config = new Uint8Array(16);
  private held: { q: VirtqueueHandle; c: DescriptorChain }[] = [];
  private parked: { q: VirtqueueHandle; c: DescriptorChain }[] = [];
  activations = 0;
  resets = 0;

  /** `lastQueueSize`: the last queue's largest ring (a power of 2), smaller than the others' default. */
  private readonly lastQueueSize: number | undefined;

  constructor(numQueues = 2, lastQueueSize?: number) {
    this.numQueues = numQueues;
    this.lastQueueSize = lastQueueSize;
    new DataView(this.config.buffer).setUint32(0, 0xec40_0000 + numQueues, true);
  }

  maxQueueSize(index: number): number {
    return index === this.numQueues - 1 && this.lastQueueSize !== undefined ? this.lastQueueSize : MAX_QUEUE_SIZE;
  }

  readConfig(): Uint8Array {
    return this.config;
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (offset + data.length > this.config.length) throw new RangeError(`config write ${offset}+${data.length}`);
    this.config.set(data, offset);
  }

  private ctx: DeviceContext | null = null;

  activate(ctx: DeviceContext): void {
    this.activations++;
    this.ctx = ctx;
  }

  processQueue(q: VirtqueueHandle): void {
    for (let c = q.pop(); c !== null; c = q.pop()) {
      const first = c.readableLen > 0 ? q.mem.readU8(c.readable[0]!.addr) : 0;
      if (first === ECHO_HOLD || first === ECHO_PARK) {
        (first === ECHO_HOLD ? this.held : this.parked).push({ q, c });
        continue;
      }
      if (first === ECHO_RELEASE) {
        for (const h of [...this.held.splice(0), ...this.parked.splice(0)]) h.q.complete(h.c.head, echo(h.q.mem, h.c));
      }
      q.complete(c.head, echo(q.mem, c));
      if (first === ECHO_BREAK) this.ctx?.needsReset('a request asked the echo device to break');
      if (first === ECHO_DIE) process.kill(process.pid, 'SIGKILL');
      if (first === ECHO_CONFIG && c.readableLen > 1) {
        this.config[4] = q.mem.readU8(c.readable[0]!.len > 1 ? c.readable[0]!.addr + 1 : c.readable[1]!.addr);
        this.ctx?.configChanged();
      }
    }
  }

  /** Parked chains go back to the ring at once; held ones are "being worked on" and make the stop wait. */
  stopQueue(index: number): number[] {
    const mine = this.parked.filter((p) => p.q.index === index);
    this.parked = this.parked.filter((p) => p.q.index !== index);
    return mine.map((p) => p.c.head);
  }

  reset(): void {
    this.resets++;
    this.held = [];
    this.parked = [];
  }
}

function echo(mem: GuestMemory, c: DescriptorChain): number {
  const src: Uint8Array[] = c.readable.flatMap((s) => mem.slices(s.addr, s.len, 'read'));
  let si = 0;
  let so = 0;
  let written = 0;
  for (const w of c.writable) {
    for (const dst of mem.slices(w.addr, w.len, 'write')) {
      let d = 0;
      while (d < dst.length && si < src.length) {
        const s = src[si]!;
        const n = Math.min(dst.length - d, s.length - so);
        dst.set(s.subarray(so, so + n), d);
        d += n;
        so += n;
        written += n;
        if (so === s.length) {
          si++;
          so = 0;
        }
      }
    }
  }
  return written;
}
