// Interoperability the other way round: QEMU 7.2's vhost-user-blk front-end
// (qemu-system-riscv64, paused with -S so no guest runs) connects to our
// back-end and performs its device initialisation: feature and protocol
// negotiation, queue count, memory slots, owner, config space.
// Skipped when qemu-system-riscv64 is not installed.
import { execa } from 'execa';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { VIRTIO_F_VERSION_1, type VirtioDeviceBackend } from '../device.ts';
import { createLogger } from '../logger.ts';
import { VhostUserBackend } from './backend.ts';

const QEMU = '/usr/bin/qemu-system-riscv64';
const dir = mkdtempSync(join(tmpdir(), 'vmm-qemu-fe-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Just enough of a virtio-blk device for QEMU's realize(): a 60-byte config with a capacity (virtio 1.2 §5.2.4). */
class ConfigOnlyBlk implements VirtioDeviceBackend {
  readonly features = VIRTIO_F_VERSION_1;
  readonly numQueues = 1;
  readConfig(): Uint8Array {
    const c = new Uint8Array(60);
    new DataView(c.buffer).setBigUint64(0, 2048n, true);
    return c;
  }
  activate(): void {}
  processQueue(): void {}
  reset(): void {}
}

describe.skipIf(!existsSync(QEMU))('QEMU vhost-user-blk front-end against our back-end', () => {
  it('completes QEMU\'s device initialisation without a protocol error', async () => {
    const sock = join(dir, 'blk.sock');
    const backend = new VhostUserBackend(new ConfigOnlyBlk(), { socketPath: sock, log: createLogger('qemu-fe-test', undefined, 'warn') });
    const seen: string[] = [];
    const failed: string[] = [];
    const gotConfig = new Promise<void>((resolve) => {
      backend.onRequest = (name, ok) => {
        seen.push(name);
        if (!ok) failed.push(name);
        if (name === 'GET_CONFIG') resolve();
      };
    });
    backend.listen();
    const qemu = execa(QEMU, [
      '-M', 'virt', '-S', '-nographic', '-nodefaults', '-m', '64M',
      '-object', 'memory-backend-memfd,id=mem,size=64M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c,path=${sock}`, '-device', 'vhost-user-blk-pci,chardev=c,num-queues=1',
    ], { reject: false, stdin: 'ignore' });
    try {
      await Promise.race([gotConfig, qemu.then((r) => { throw new Error(`qemu exited early: ${r.stderr}`); })]);
      expect(failed).toEqual([]);
      expect(seen).toEqual(expect.arrayContaining(['GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'SET_OWNER', 'GET_CONFIG']));
    } finally {
      qemu.kill('SIGKILL');
      await qemu;
      backend.close();
    }
  });
});
