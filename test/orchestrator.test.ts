// The orchestrator end to end, one real guest for all of it (boots are the
// expensive part): disks as vmm-blk processes over vhost-user, ext4 made on
// the host, a verifying write workload while the blk process is SIGKILLed
// again and again, hot-add / backend replacement / hot-remove through QMP,
// and QMP over its unix socket with socat as the client.
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { QmpClient, startGuestSession as bootGuest } from '@vmm/orchestrator';


const BLOCKS = 64;
const KILLS = 10;

// Guest side. Rounds of writes over BLOCKS 4 KiB blocks, each block tagged
// with its round and number, fsync'd; verification reads them back after
// dropping the page cache.
const writeRound = (dev: string, roundVar: string) =>
  `i=0; while [ $i -lt ${BLOCKS} ]; do printf "r%04d-blk%08d" $${roundVar} $i | dd of=${dev} bs=4096 seek=$i conv=notrunc,fsync 2>/dev/null || echo WERR ${dev} $i; i=$((i+1)); done`;
const verify = (dev: string, roundVar: string, label: string) =>
  `echo 3 > /proc/sys/vm/drop_caches; bad=0; i=0; while [ $i -lt ${BLOCKS} ]; do v=$(dd if=${dev} bs=4096 skip=$i count=1 2>/dev/null | head -c 17); [ "$v" = "$(printf r%04d-blk%08d $${roundVar} $i)" ] || bad=$((bad+1)); i=$((i+1)); done; echo "${label} round=$${roundVar} bad=$bad"`;

const GUEST = `
mount -t ext4 /dev/vda /mnt && cat /mnt/hello.txt && echo guest-wrote > /mnt/new.txt && umount /mnt && echo EXT4-OK
echo @@KILL-PHASE@@
r=0
while [ ! -e /sys/block/vdc ]; do r=$((r+1)); ${writeRound('/dev/vdb', 'r')}; done
${verify('/dev/vdb', 'r', 'VDB')}
echo @@VDC-WRITING@@
c=0
while [ $c -lt 3 ]; do c=$((c+1)); ${writeRound('/dev/vdc', 'c')}; done
${verify('/dev/vdc', 'c', 'VDC')}
echo @@RELEASE-VDC@@
n=0; while [ -e /sys/block/vdc ] && [ $n -lt 120 ]; do sleep 1; n=$((n+1)); done
[ -e /sys/block/vdc ] && echo VDC-STILL-THERE || echo VDC-GONE
echo "IOERRORS=$(dmesg | grep -ci 'i/o error')"
`;

describe('orchestrator: disks as device processes', () => {
  it('boots with raw + qcow2 disks, survives 10 SIGKILLs mid-write, hot-adds, replaces and hot-removes a disk', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmm-orch-'));
    const content = join(dir, 'content');
    mkdirSync(content);
    writeFileSync(join(content, 'hello.txt'), 'hello from the host\n');
    const raw = join(dir, 'ext4.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', content, raw, '16M']);
    const qcow = join(dir, 'data.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '8M']);
    const hot = join(dir, 'hot.img');
    writeFileSync(hot, Buffer.alloc(8 << 20));

    const g = await bootGuest({ cmd: GUEST, disks: [`${raw},format=raw`, `${qcow},format=qcow2`] });
    try {
      await scenario(g, { raw, qcow, hot, dir });
    } finally {
      await g.attached.close();
    }
  });
});

async function scenario(g: Awaited<ReturnType<typeof bootGuest>>, f: { raw: string; qcow: string; hot: string; dir: string }): Promise<void> {
    const { raw, qcow, hot, dir } = f;
    // QMP with socat as the client, as a QMP tool would use it (asynchronously:
    // the QMP server lives in this process).
    const socatOut = await new Promise<string>((resolve, reject) => {
      const child = execFile('socat', ['-t', '3', '-', `UNIX-CONNECT:${g.qmpPath}`], { timeout: 30_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)));
      child.stdin!.end('{"execute":"qmp_capabilities"}\n{"execute":"query-block","id":"qb"}\n{"execute":"bogus"}\n');
    });
    const lines = socatOut.trim().split(/\r?\n/).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[0]).toHaveProperty('QMP');
    expect(lines[1]).toEqual({ return: {} });
    expect(lines[2]).toMatchObject({ id: 'qb', return: [{ device: 'disk0', inserted: { drv: 'raw' } }, { device: 'disk1', inserted: { drv: 'qcow2' } }] });
    expect(lines[3]).toMatchObject({ error: { class: 'CommandNotFound' } });

    const q = await QmpClient.connect(g.qmpPath);
    await g.waitFor('@@KILL-PHASE@@');
    expect(g.output()).toContain('hello from the host');
    expect(g.output()).toContain('EXT4-OK');
    const before = (await q.cmd('query-processes')).return as { id: string; pid: number; harts?: { hart: number; engine: string; blocks: number; codeCacheBytes: number }[] }[];
    const pid0 = before.find((p) => p.id === 'disk1')!.pid;
    // The vmm process reports each hart's engine and the translator's code cache after the boot.
    const harts = before.find((p) => p.id === 'orchestrator+machine')!.harts!;
    expect(harts.map((h) => [h.hart, h.engine])).toEqual([[0, 'jit']]);
    expect(harts[0]!.blocks).toBeGreaterThan(0);
    expect(harts[0]!.codeCacheBytes).toBeGreaterThan(harts[0]!.blocks);
    for (let k = 0; k < KILLS; k++) {
      await new Promise((r) => setTimeout(r, 1500));
      expect(await q.cmd('inject-fault', { kind: 'kill', device: 'disk1' })).toHaveProperty('return');
      const ev = await q.event('BACKEND_RESTARTED');
      expect(ev).toMatchObject({ data: { device: 'disk1', restarts: k + 1 } });
    }
    const after = (await q.cmd('query-processes')).return as { id: string; pid: number; restarts: number }[];
    expect(after.find((p) => p.id === 'disk1')).toMatchObject({ restarts: KILLS });
    expect(after.find((p) => p.id === 'disk1')!.pid).not.toBe(pid0);

    // Hot-add: the guest's write loop ends when /dev/vdc shows up.
    expect(await q.cmd('device_add', { driver: 'virtio-blk', id: 'hot0', file: hot, format: 'raw' })).toEqual({ return: {} });
    await g.waitFor('@@VDC-WRITING@@');
    expect(g.output()).toMatch(/VDB round=\d+ bad=0/);
    // Replace the back-end under load: a new process behind the same device.
    expect(await q.cmd('device_add', { driver: 'virtio-blk', id: 'hot0', file: hot, format: 'raw', replace: true })).toEqual({ return: {} });
    await q.event('BACKEND_REPLACED');
    await g.waitFor('@@RELEASE-VDC@@');
    expect(g.output()).toContain('VDC round=3 bad=0');
    expect(await q.cmd('device_del', { id: 'hot0' })).toEqual({ return: {} });
    expect(await q.event('DEVICE_DELETED')).toMatchObject({ data: { device: 'hot0' } });
    q.close();

    const { exit, status } = await g.done;
    const out = g.output();
    expect(out).toContain('VDC-GONE');
    expect(out).not.toContain('WERR');
    expect(out).toContain('IOERRORS=0');
    expect(exit.reason).toBe('poweroff');
    expect(status).toBe(0);

    // From the host: the ext4 file the guest wrote, a clean qcow2 whose
    // blocks all carry the guest's last round.
    expect(execFileSync('debugfs', ['-R', 'cat /new.txt', raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toBe('guest-wrote\n');
    execFileSync('qemu-img', ['check', '-q', qcow]);
    const flat = join(dir, 'data.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', qcow, flat]);
    const round = Number(/VDB round=(\d+)/.exec(out)![1]);
    const data = readFileSync(flat);
    for (let i = 0; i < BLOCKS; i++) {
      expect(data.subarray(i * 4096, i * 4096 + 17).toString()).toBe(`r${String(round).padStart(4, '0')}-blk${String(i).padStart(8, '0')}`);
    }
}
