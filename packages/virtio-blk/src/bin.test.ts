// The `vmm-blk` bin as a user runs it: from a plain shell whose PATH has only
// the system directories (where `node` is the machine's Node 20, which cannot
// run .ts), through the shared launcher packages/core/bin/run-ts.sh. It must find the
// pinned Node itself, answer --help, refuse bad flags naming them, and serve
// a disk over vhost-user (real process, socket, memfd, eventfds).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, DeviceProcess } from '@vmm/core';
import { afterAll, describe, expect, it } from 'vitest';
import { BlkClient } from './client.ts';
import { VIRTIO_BLK_S_OK } from './spec.ts';

const BIN = join(import.meta.dirname, '..', 'bin', 'vmm-blk');
/** What a login shell on this machine has: no pnpm shims, no node_modules/.bin. */
const PLAIN_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: process.env.HOME ?? '/root' };
const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-bin-'));
const log = createLogger('blk-bin-test', undefined, 'warn');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(args: string[], env: Record<string, string> = PLAIN_ENV): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('/bin/sh', ['-c', '"$0" "$@"', BIN, ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vmm-blk bin from a plain shell', () => {
  it('--help prints the usage and exits 0', () => {
    const r = run(['--help']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^usage: vmm-blk --socket PATH/);
    expect(r.stdout).toContain('--file');
    expect(r.stdout).toContain('--queues N');
  });

  it('a bad flag or value exits 2 with one line naming it', () => {
    const unknown = run(['--socket', 's', '--file', 'i', '--bogus']);
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toContain("unknown option 'bogus'");
    const range = run(['--socket', 's', '--file', 'i', '--queues', '99']);
    expect(range.status).toBe(2);
    expect(range.stderr).toContain('queues=99');
    const missing = run(['--file', 'i']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('--socket PATH is required');
  });

  it('a missing image is a configuration error (exit 2) naming the file', () => {
    const r = run(['--socket', join(dir, 'x.sock'), '--file', join(dir, 'nope.img'), '--log-level', 'silent']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(`cannot open image ${join(dir, 'nope.img')}`);
  });

  it('VMM_NODE pointing nowhere is a clear error, not a crash of the shell', () => {
    const r = run(['--help'], { ...PLAIN_ENV, VMM_NODE: join(dir, 'no-node') });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`VMM_NODE=${join(dir, 'no-node')} is not an executable file`);
  });

  it('serves a raw image over vhost-user when started through the bin', async () => {
    const image = join(dir, 'disk.raw');
    writeFileSync(image, new Uint8Array(1 << 20));
    const sock = join(dir, 'disk.sock');
    // The orchestrator's handshake (IPC ready message) passes through the launcher's exec.
    const proc = new DeviceProcess({ name: 'bin', command: BIN, args: ['--socket', sock, '--file', image, '--log-level', 'warn'], env: PLAIN_ENV, log });
    await proc.start();
    try {
      const c = await BlkClient.connect(sock, { queues: 1, log });
      const data = new Uint8Array(8192).map((_, i) => (i * 7 + 3) & 0xff);
      expect(await c.write(8, data)).toBe(VIRTIO_BLK_S_OK);
      const back = new Uint8Array(data.length);
      expect(await c.read(8, back)).toBe(VIRTIO_BLK_S_OK);
      expect(Buffer.compare(back, data)).toBe(0);
      c.close();
    } finally {
      expect(await proc.stop()).toEqual({ code: 0, signal: null });
    }
    expect(Buffer.compare(readFileSync(image).subarray(4096, 4096 + 8192), new Uint8Array(8192).map((_, i) => (i * 7 + 3) & 0xff))).toBe(0);
  });
});
