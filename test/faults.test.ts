// Each fault `inject-fault` offers, against a real guest (one boot for all):
// the effect a guest would see from real hardware, and no damaged data.
// Direct I/O in the guest (dd iflag/oflag=direct) makes one dd one request.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import { QmpClient, startGuestSession } from '@vmm/orchestrator';

const VMM_CLI = fileURLToPath(new URL('../packages/orchestrator/src/cli.ts', import.meta.url));

const W = (blk: number, tag: string) => `printf '${tag}' | dd of=/dev/vda bs=4096 seek=${blk} conv=sync oflag=direct 2>/dev/null`;
const R = (blk: number) => `dd if=/dev/vda bs=4096 skip=${blk} count=1 iflag=direct 2>/dev/null | head -c 8`;
const GUEST = `
${W(10, 'before10')}; ${W(11, 'before11')}; ${W(12, 'before12')}
echo @@PAUSE@@; sleep 1
t0=$(date +%s); ${W(1, 'paused01')}; echo "PAUSE-WRITE rc=$? secs=$(( $(date +%s) - t0 ))"
echo "PAUSE-READ $(${R(1)})"
echo @@DELAY@@; sleep 1
${W(2, 'delayd02')}; echo "DELAY-WRITE rc=$?"; echo "DELAY-READ $(${R(2)})"
echo @@FAIL@@; sleep 1
${W(10, 'failed10')}; echo "FAIL-WRITE1 rc=$?"
${W(11, 'passed11')}; echo "FAIL-WRITE2 rc=$?"
echo @@ENOSPC@@; sleep 1
${W(12, 'nospace2')}; echo "ENOSPC-WRITE rc=$?"
echo "ENOSPC-READ $(${R(11)})"
echo @@ENOSPC-OFF@@; sleep 1
${W(13, 'spaceok3')}; echo "ENOSPC-OFF-WRITE rc=$?"
echo @@CRASHY@@
while [ ! -e /sys/block/vdb ]; do sleep 0.2; done; echo CRASHY-UP
slot=$(readlink -f /sys/block/vdb); slot=\${slot%%.virtio_mmio*}; slot=\${slot##*/}
while [ -e /sys/block/vdb ]; do sleep 0.2; done; echo CRASHY-GONE
while [ "$(devmem $((0x$slot + 8)) 32)" != 0x00000000 ]; do sleep 0.2; done; echo CRASHY-DELETED
${W(14, 'stillok4')}; echo "AFTER-GIVE-UP-WRITE rc=$?"
echo "IOERRORS=$(dmesg | grep -ci 'i/o error')"
`;

describe('inject-fault against a real guest', () => {
  it('pause/resume stalls I/O, delay-calls slows it, fail-requests and enospc fail only what they should', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'vmm-faults-')), 'd.img');
    writeFileSync(file, Buffer.alloc(1 << 20));
    const tokenPath = join(mkdtempSync(join(tmpdir(), 'vmm-token-')), 'token');
    const g = await startGuestSession({ cmd: GUEST, disks: [`${file},format=raw,id=d0`], apiPort: 0, tokenPath });
    try {
      // The WebSocket API: refused without the token, served with it.
      const port = g.attached.apiPort!;
      const refused = await new Promise<number>((resolve, reject) => {
        // A WebSocket upgrade request without the token, as any client would send it.
        const req = http.get({ host: '127.0.0.1', port, path: '/', headers: {
          Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        } }, (res) => resolve(res.statusCode ?? 0));
        req.on('upgrade', () => resolve(101));
        req.on('error', reject);
      });
      expect(refused).toBe(401);
      const token = readFileSync(tokenPath, 'utf8').trim();
      const apiStatus = await new Promise<Record<string, unknown>>((resolve, reject) => {
        // Node's built-in WebSocket client, token in the query string.
        const ws = new WebSocket(`ws://127.0.0.1:${port}/?token=${token}`);
        let greeted = false;
        ws.onmessage = (ev) => {
          if (!greeted) { greeted = true; ws.send(JSON.stringify({ execute: 'query-status' })); return; }
          ws.close();
          resolve(JSON.parse(String(ev.data)) as Record<string, unknown>);
        };
        ws.onerror = () => reject(new Error('WebSocket API refused a client with the token'));
      });
      expect(apiStatus).toEqual({ return: { status: "running", running: true, singlestep: false } });
      const q = await QmpClient.connect(g.qmpPath);
      await g.waitFor('@@PAUSE@@');
      expect(await q.cmd('inject-fault', { kind: 'pause', device: 'd0' })).toHaveProperty('return.pid');
      await new Promise((r) => setTimeout(r, 4000));
      expect(g.output()).not.toContain('PAUSE-WRITE'); // the write is stalled, not failed
      expect(await q.cmd('inject-fault', { kind: 'resume', device: 'd0' })).toHaveProperty('return');
      await g.waitFor('@@DELAY@@');
      expect(g.output()).toMatch(/PAUSE-WRITE rc=0 secs=\d+/);
      expect(g.output()).toContain('PAUSE-READ paused01');
      expect(await q.cmd('inject-fault', { kind: 'delay-calls', device: 'd0', ms: 200 })).toEqual({ return: { device: 'd0', ms: 200 } });
      await g.waitFor('@@FAIL@@');
      expect(g.output()).toContain('DELAY-WRITE rc=0');
      expect(g.output()).toContain('DELAY-READ delayd02');
      await q.cmd('inject-fault', { kind: 'delay-calls', device: 'd0', ms: 0 });
      expect(await q.cmd('inject-fault', { kind: 'fail-requests', device: 'd0', count: 1 })).toEqual({ return: { device: 'd0', count: 1 } });
      await g.waitFor('@@ENOSPC@@');
      expect(g.output()).toMatch(/FAIL-WRITE1 rc=[1-9]/);
      expect(g.output()).toContain('FAIL-WRITE2 rc=0');
      expect(await q.cmd('inject-fault', { kind: 'enospc', device: 'd0' })).toEqual({ return: { device: 'd0', on: true } });
      await g.waitFor('@@ENOSPC-OFF@@');
      expect(g.output()).toMatch(/ENOSPC-WRITE rc=[1-9]/);
      expect(g.output()).toContain('ENOSPC-READ passed11');
      await q.cmd('inject-fault', { kind: 'enospc', device: 'd0', on: false });
      expect(await q.cmd('inject-fault', { kind: 'melt', device: 'd0' })).toHaveProperty('error.class', 'GenericError');

      // The guest now waits for a second disk, so the VM is sure to be running for what follows.
      await g.waitFor('@@CRASHY@@');
      // A back-end that cannot start fails device_add with its own message; the VM runs on.
      const bad = await q.cmd('device_add', { driver: 'virtio-blk', id: 'nope', file: join(tmpdir(), 'no-such-image.img') });
      expect((bad.error as { desc: string }).desc).toMatch(/cannot open image .*no-such-image.img/);
      // A back-end that keeps crashing without getting any work done is given
      // up after a bounded number of restarts: an event, its state in
      // query-processes, and the VM runs on (the admin can then remove it).
      const crashy = join(tmpdir(), `vmm-crashy-${process.pid}.img`);
      writeFileSync(crashy, Buffer.alloc(1 << 20));
      expect(await q.cmd('device_add', { driver: 'virtio-blk', id: 'crashy', file: crashy })).toEqual({ return: {} });
      await g.waitFor('CRASHY-UP');
      let failed: Record<string, unknown> | undefined;
      for (let k = 1; !failed && k <= 20; k++) {
        expect(await q.cmd('inject-fault', { kind: 'kill', device: 'crashy' })).toHaveProperty('return.pid');
        const ev = await q.event(['BACKEND_RESTARTED', 'BACKEND_FAILED']);
        if (ev.event === 'BACKEND_FAILED') failed = ev;
      }
      expect(failed).toMatchObject({ data: { device: 'crashy' } });
      const procs = (await q.cmd('query-processes')).return as { id: string; state: string }[];
      expect(procs.find((p) => p.id === 'crashy')).toMatchObject({ state: 'failed' });
      expect(procs.find((p) => p.id === 'd0')).toMatchObject({ state: 'running' });
      expect(await q.cmd('query-status')).toMatchObject({ return: { running: true } });
      // Given up, the device reports DEVICE_NEEDS_RESET with a configuration change interrupt (virtio 1.2 §2.1.2):
      // the guest's agent reads it and releases the disk before anyone asks it to.
      await g.waitFor('CRASHY-GONE');
      expect(await q.cmd('device_del', { id: 'crashy' })).toEqual({ return: {} });
      expect(await q.event('DEVICE_DELETED')).toMatchObject({ data: { device: 'crashy' } });
      await g.waitFor('IOERRORS='); // the next line: AFTER-GIVE-UP-WRITE's is complete (the console can deliver a line in pieces)
      expect(g.output()).toContain('CRASHY-DELETED'); // the emptied slot reads DeviceID 0
      expect(g.output()).toContain('AFTER-GIVE-UP-WRITE rc=0');
      q.close();
      const { status } = await g.done;
      expect(status).toBe(0);
      expect(g.output()).toContain('ENOSPC-OFF-WRITE rc=0');
      expect(g.output()).toMatch(/IOERRORS=[1-9]/); // the injected failures were reported to the guest as I/O errors
      // From the host: failed writes left the old data, the others landed.
      const d = readFileSync(file);
      const tag = (b: number) => d.subarray(b * 4096, b * 4096 + 8).toString('latin1');
      expect([tag(1), tag(2), tag(10), tag(11), tag(12), tag(13), tag(14)]).toEqual(['paused01', 'delayd02', 'before10', 'passed11', 'before12', 'spaceok3', 'stillok4']);
    } finally {
      await g.attached.close();
    }
  });

  it('vmm run refuses a disk whose back-end cannot open it, with the back-end\'s message', async () => {
    const bad = join(mkdtempSync(join(tmpdir(), 'vmm-badqcow-')), 'bad.qcow2');
    writeFileSync(bad, Buffer.concat([Buffer.from('QFI\xfb', 'latin1'), Buffer.alloc(4096, 0x41)]));
    const r = spawnSync(process.execPath, [VMM_CLI, 'run', '--disk', bad, '--exec', 'true'], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/vmm: virtio-blk disk0 \(.*bad\.qcow2\): .*qcow2 version \d+ is not supported/);
  });
});
