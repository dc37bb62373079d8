// Every device behind the IOMMU, and the IOMMU's faults, end to end. One
// IOMMU guest (the kit's IOMMU kernel under vmm, vmm-iommu in the top slot)
// with an ext4 disk (vda, endpoint 6) and a NIC (eth0, endpoint 5) on a
// vmm-switch, and a QEMU guest on the same switch as the NIC's peer. The
// cases share the one boot and run in the order the guest's script goes:
//
// 1. the NIC negotiates VIRTIO_F_ACCESS_PLATFORM and carries 4 MiB each way
//    (checksums match), its endpoint's MAP/UNMAP counts rise in
//    query-iommu; meanwhile the guest writes files on ext4 and the host
//    kills vmm-iommu (inject-fault kind=iommu-kill): it is restarted over
//    its table, no block is lost or corrupted, the guest logs no I/O error;
// 2. stray-dma: vmm-blk reaches for the canary page (reserved in the DTB)
//    instead of a read's buffer: refused, that read fails with an I/O
//    error, the guest's virtio-iommu driver logs the fault event, and the
//    canary — read from guest RAM by the host — is untouched;
// 3. unmap-race, both phases: vmm-iommu UNMAPs a held read's buffer. With
//    the buffer already translated the read completes and the UNMAP
//    completes only after the read's last access; before translation the
//    read fails. How the test proves no freed memory is touched: memory is
//    "freed" only once its UNMAP is complete (Linux reuses the page after
//    iommu_unmap returns, strict mode); vmm-blk stamps its last access to
//    guest memory and vmm-iommu the UNMAP's completion with the same
//    system-wide CLOCK_MONOTONIC, and the test checks last access <
//    completion (and that the UNMAP was applied while the read was held);
// 4. a disk hot-plugged with device_add lands in an endpoint slot, is
//    given the table, negotiates ACCESS_PLATFORM and is used translated;
// 5. kill -9 of vmm-blk behind the IOMMU mid-write recovers as without it
//    (a reader slot the dead process left is released by vmm-iommu);
// 6. bad input: unknown device, a device not behind the IOMMU's
//    translation, a fault that does not fit the kind: GenericError naming it.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, DeviceProcess } from '@vmm/core';
import { ExecOutputFilter, initrdWithExec, IOMMU_CANARY, QmpClient, startGuestSession, type GuestKit, type GuestSession } from '@vmm/orchestrator';
import { RAM_BASE, WASM_RAM_OFFSET } from '@vmm/vcpu';
import { querySwitch } from '@vmm/virtio-net';
import { kitAndInitramfs, qemuArgs, requireQemu, runBounded, unlessStalled } from './guest-helpers.ts';

const NET = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
const SWITCH = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vmm-iommu-dev-'));
const log = createLogger('iommu-devices-test', undefined, 'warn');
const env = { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir };
const SW = `iommu${process.pid}`;
const MB4 = 4 << 20;

// The QEMU peer: receives the IOMMU guest's file on 5000, then sends it back to its port 5001.
const PEER = `
echo 'cat > /tmp/f' > /tmp/rx.sh; chmod +x /tmp/rx.sh
n=0; until ping -c 1 -W 5 10.0.0.2 > /dev/null; do n=$((n+1)); [ $n -gt 120 ] && { echo "no ping reply from 10.0.0.2"; exit 20; }; done
nc -l -p 5000 -e /tmp/rx.sh
echo "peer-received $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
n=0; until nc 10.0.0.2 5001 < /tmp/f; do n=$((n+1)); [ $n -gt 120 ] && exit 22; sleep 1; done
n=0; while netstat -tn | grep ':5001 ' | grep -qE 'ESTABLISHED|FIN_WAIT1|CLOSING|LAST_ACK'; do n=$((n+1)); [ $n -gt 600 ] && exit 23; sleep 0.2; done
`;

const GUEST = `
echo "NET-AP=$(cut -c34 /sys/class/net/eth0/device/features) VDA-AP=$(cut -c34 /sys/block/vda/device/features)"
mount -t ext4 /dev/vda /mnt || echo MOUNT-FAILED
echo 'cat > /tmp/back' > /tmp/rx.sh; chmod +x /tmp/rx.sh
dd if=/dev/urandom of=/tmp/f bs=64k count=64 2>/dev/null
echo "sent $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
echo @@NET@@
n=0; until ping -c 1 -W 5 10.0.0.3 > /dev/null; do n=$((n+1)); [ $n -gt 120 ] && { echo "no ping reply from 10.0.0.3"; exit 21; }; done
# Disk load in the background while the NIC carries the file both ways: the host kills vmm-iommu under both.
( i=0; while [ $i -lt 16 ]; do dd if=/dev/urandom of=/mnt/w$i bs=64k count=8 2>/dev/null; sync; sha256sum /mnt/w$i >> /tmp/wsums; i=$((i+1)); done ) &
nc -l -p 5001 -e /tmp/rx.sh &
echo @@LOAD@@
n=0; until nc 10.0.0.3 5000 < /tmp/f; do n=$((n+1)); [ $n -gt 120 ] && exit 22; sleep 1; done
wait
echo "back $(wc -c < /tmp/back) $(sha256sum /tmp/back | cut -d' ' -f1)"
echo 3 > /proc/sys/vm/drop_caches
echo "DISK-OK=$(sha256sum -c /tmp/wsums 2>/dev/null | grep -c ': OK')"
umount /mnt && echo UMOUNT-OK
echo "IOERRORS-LOAD=$(dmesg | grep -ci 'i/o error')"
echo @@STRAY@@
sleep 3
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=7 iflag=direct 2>/dev/null; echo "STRAY-DD=$?"
echo @@RACE1@@
sleep 3
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=9 iflag=direct 2>/dev/null; echo "RACE1-DD=$?"
echo @@RACE2@@
sleep 3
dd if=/dev/vda of=/dev/null bs=4k count=1 skip=11 iflag=direct 2>/dev/null; echo "RACE2-DD=$?"
echo @@HOTPLUG@@
n=0; until [ -b /dev/vdb ]; do n=$((n+1)); [ $n -gt 300 ] && { echo "no vdb"; exit 24; }; sleep 0.2; done
echo "VDB-AP=$(cut -c34 /sys/block/vdb/device/features)"
dd if=/dev/urandom of=/tmp/h bs=64k count=16 2>/dev/null
dd if=/tmp/h of=/dev/vdb bs=64k oflag=direct 2>/dev/null; sync
echo "HOT-SUM $(sha256sum /tmp/h | cut -d' ' -f1) $(dd if=/dev/vdb bs=64k count=16 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/big bs=64k count=64 2>/dev/null
echo @@DEVKILL@@
dd if=/tmp/big of=/dev/vda bs=64k seek=512 oflag=direct 2>/dev/null || echo DEVKILL-WRITE-FAILED
echo "DEVKILL-SUM $(sha256sum /tmp/big | cut -d' ' -f1) $(dd if=/dev/vda bs=64k skip=512 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "IOERRORS=$(dmesg | grep -c 'I/O error, dev vda')"
dmesg | grep 'fault from EP' | sed -e 's/^\\[[^]]*\\] //' -e 's/^/FAULT-LINE /'
`;

interface EndpointRow { id: number; domain: number | null; maps: number; unmaps: number }
interface IommuRow { device: string; endpoints: EndpointRow[]; faults: number }

let kit: GuestKit;
let g: GuestSession;
let q: QmpClient;
let peer: Promise<{ output: string; status: number | null; transcript: string }>;
const procs: DeviceProcess[] = [];
const img = join(dir, 'a.img');
const hot = join(dir, 'b.img');

async function iommuRow(): Promise<IommuRow> {
  return ((await q.cmd('query-iommu')).return as IommuRow[])[0]!;
}

/** Guest RAM as the host sees it (the memfd every process maps): the canary page. */
function canaryBytes(): Uint8Array {
  const buf = g.attached.vm.machine.memory.buffer as ArrayBuffer;
  return new Uint8Array(buf, WASM_RAM_OFFSET + (IOMMU_CANARY.gpa - RAM_BASE), IOMMU_CANARY.size);
}

async function qemuPeer(): Promise<{ output: string; status: number | null; transcript: string }> {
  const { initramfs } = await kitAndInitramfs();
  const x = await initrdWithExec(initramfs, PEER);
  const initrd = join(dir, 'peer.cpio');
  writeFileSync(initrd, x.initrd);
  const r = await runBounded('qemu-system-riscv64', [
    ...qemuArgs(kit, initrd, 1, 'console=ttyS0 panic=-1 quiet ip=10.0.0.3::10.0.0.1:255.255.255.0::eth0:off'),
    '-object', 'memory-backend-memfd,id=mem,size=512M,share=on',
    '-numa', 'node,memdev=mem',
    '-chardev', `socket,id=c,path=${join(dir, 'peer.sock')}`,
    '-netdev', 'vhost-user,id=n,chardev=c,queues=1',
    '-device', 'virtio-net-pci,netdev=n,mac=52:54:00:00:1e:03,romfile=',
  ], { timeoutMs: 800_000 });
  let output = '';
  const f = new ExecOutputFilter(x.markers, (t) => (output += t));
  f.push(new TextEncoder().encode(r.stdout));
  return { output, status: f.status, transcript: `${r.stdout.slice(-3000)}\n${r.stderr.slice(-1500)}` };
}

beforeAll(async () => {
  requireQemu();
  ({ kit } = await kitAndInitramfs());
  writeFileSync(img, '');
  truncateSync(img, 64 << 20);
  execFileSync('mkfs.ext4', ['-q', '-F', img]);
  writeFileSync(hot, '');
  truncateSync(hot, 16 << 20);
  const sw = new DeviceProcess({ name: 'switch', args: [SWITCH, '--name', SW], env, log });
  await sw.start();
  procs.push(sw);
  const p = new DeviceProcess({ name: 'net-peer', args: [NET, '--socket', join(dir, 'peer.sock'), '--switch', SW, '--mac', '52:54:00:00:1e:03', '--id', 'peer'], env, log });
  await p.start();
  procs.push(p);
  g = await startGuestSession({
    iommu: true,
    disks: [`${img},format=raw,id=disk0`],
    nics: [`switch=${join(dir, `switch-${SW}.sock`)},mac=52:54:00:00:1e:02`],
    append: 'ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off',
    cmd: GUEST,
  });
  peer = qemuPeer();
  q = await QmpClient.connect(g.qmpPath);
});

afterAll(async () => {
  q?.close();
  await g?.attached.close();
  await Promise.all(procs.map((p) => p.stop()));
  rmSync(dir, { recursive: true, force: true });
});

describe('every device behind the IOMMU, and its faults', () => {
  it('the NIC translates every ring and buffer address: 4 MiB each way intact, its endpoint MAPs and UNMAPs; vmm-iommu killed under disk and net load loses nothing', async () => {
    await g.waitFor('@@NET@@');
    const procs0 = (await q.cmd('query-processes')).return as { id: string; role: string }[];
    expect(procs0.map((p) => p.id)).toEqual(expect.arrayContaining(['iommu0', 'disk0', 'net0']));
    const before = await iommuRow();
    const nic0 = before.endpoints.find((e) => e.id === 5)!;
    expect(nic0.domain).not.toBeNull();
    await g.waitFor('@@LOAD@@');
    // Once the file is on its way (half a MiB through the switch), kill vmm-iommu, named through the NIC behind it.
    const swSock = join(dir, `switch-${SW}.sock`);
    const t0 = Date.now();
    let port = { rx_bytes: 0, tx_bytes: 0 };
    while (port.rx_bytes < 512 << 10) {
      if (Date.now() - t0 > 600_000) throw new Error(`the transfer never got going: ${JSON.stringify(port)}`);
      await new Promise((r) => setTimeout(r, 100));
      port = (await querySwitch(swSock)).ports.find((x) => x.name === 'net0') ?? port;
    }
    // Under net load: the way back (peer → this guest) has not crossed yet.
    expect(port.tx_bytes).toBeLessThan(MB4);
    const kill = await q.cmd('inject-fault', { kind: 'iommu-kill', device: 'net0' });
    expect(kill).toMatchObject({ return: { device: 'iommu0', for: 'net0' } });
    expect(await q.event('BACKEND_RESTARTED')).toMatchObject({ data: { device: 'iommu0' } });
    await unlessStalled(q, g.waitFor('@@STRAY@@'));
    const out = g.output();
    expect(out).toContain('NET-AP=1 VDA-AP=1');
    const sent = /sent (\d+) ([0-9a-f]{64})/.exec(out);
    expect(sent?.[1]).toBe(String(MB4));
    expect(/back (\d+) ([0-9a-f]{64})/.exec(out)?.slice(1)).toEqual(sent?.slice(1));
    expect(out).toContain('DISK-OK=16');
    expect(out).toContain('UMOUNT-OK');
    expect(out).toContain('IOERRORS-LOAD=0');
    // The NIC's endpoint mapped and unmapped its buffers: its rx and tx went through the IOMMU.
    const after = await iommuRow();
    const nic1 = after.endpoints.find((e) => e.id === 5)!;
    expect(nic1.domain).toBe(nic0.domain);
    // (Linux's virtio_net maps receive pages once per page fragment, not per frame: fewer MAPs than frames.)
    log.warn({ nicMaps: nic1.maps - nic0.maps, nicUnmaps: nic1.unmaps - nic0.unmaps }, 'NIC endpoint MAP/UNMAP during the transfer');
    expect(nic1.maps - nic0.maps).toBeGreaterThan(100);
    expect(nic1.unmaps - nic0.unmaps).toBeGreaterThan(100);
    const p = await peer;
    expect(p.status, p.transcript).toBe(0);
    expect(/peer-received (\d+) ([0-9a-f]{64})/.exec(p.output)?.slice(1)).toEqual(sent?.slice(1));
    execFileSync('e2fsck', ['-fn', img], { stdio: 'pipe' });
  });

  it('bad input: unknown device, a device not translated by the IOMMU, a fault that does not fit the kind: GenericError naming it', async () => {
    const e1 = await q.cmd('inject-fault', { kind: 'stray-dma', device: 'nosuch' });
    expect(e1).toMatchObject({ error: { class: 'GenericError' } });
    expect(JSON.stringify(e1)).toContain('device=nosuch: no such device');
    const e2 = await q.cmd('inject-fault', { kind: 'stray-dma', device: 'iommu0' });
    expect(e2).toMatchObject({ error: { class: 'GenericError' } });
    expect(JSON.stringify(e2)).toContain('kind=stray-dma: does not apply to virtio-iommu iommu0');
    const e3 = await q.cmd('inject-fault', { kind: 'unmap-race', device: 'net0' });
    expect(JSON.stringify(e3)).toContain('kind=unmap-race: does not apply to virtio-net net0');
    // A bad option value is refused by the kind's own schema.
    const e4 = await q.cmd('inject-fault', { kind: 'stray-dma', device: 'disk0', iova: 'x' });
    expect(e4).toMatchObject({ error: { class: 'GenericError' } });
  });

  it('stray-dma: the access outside the mappings is refused, that read fails, the guest logs the fault, the canary is untouched', async () => {
    // The guest is idle now (ext4 unmounted); its next request is the one read it makes in 3 s.
    await g.waitFor('@@STRAY@@');
    const canary = randomBytes(IOMMU_CANARY.size);
    canaryBytes().set(canary);
    const faults0 = (await iommuRow()).faults;
    const r = await q.cmd('inject-fault', { kind: 'stray-dma', device: 'disk0' });
    expect(r).toMatchObject({ return: { device: 'disk0', endpoint: 6, iova: IOMMU_CANARY.gpa } });
    // (The next marker, not 'STRAY-DD=': console output may arrive split mid-line.)
    await g.waitFor('@@RACE1@@');
    expect(g.output()).toContain('STRAY-DD=1');
    expect(Buffer.from(canaryBytes()).equals(canary)).toBe(true);
    expect((await iommuRow()).faults).toBe(faults0 + 1);
  });

  it('unmap-race: a read held after translation completes and its UNMAP completes after its last access; held before translation it fails', async () => {
    const r1 = (await q.cmd('inject-fault', { kind: 'unmap-race', device: 'disk0', 'hold-ms': 800 })) as { return: { held: { iova: number; access: string }; unmap: { appliedNs: number; completedNs: number; graceWaitMs: number; virtStart: number; virtEnd: number }; request: { status: number; accessesEndedNs: number; resumedNs: number } } };
    expect(r1.return, JSON.stringify(r1)).toBeDefined();
    const a = r1.return;
    expect(a.held.access).toBe('write'); // a read: the device writes the guest's buffer
    expect(a.held.iova).toBeGreaterThanOrEqual(a.unmap.virtStart);
    expect(a.held.iova).toBeLessThanOrEqual(a.unmap.virtEnd);
    expect(a.request.status).toBe(0); // VIRTIO_BLK_S_OK
    expect(a.unmap.appliedNs).toBeLessThan(a.request.resumedNs); // the mapping was gone from the table while the read went on
    expect(a.request.accessesEndedNs).toBeLessThan(a.unmap.completedNs); // and the UNMAP waited for its last access
    expect(a.unmap.graceWaitMs).toBeGreaterThan(0);
    await g.waitFor('@@RACE2@@');
    expect(g.output()).toContain('RACE1-DD=0');

    const r2 = (await q.cmd('inject-fault', { kind: 'unmap-race', device: 'disk0', 'hold-ms': 800, phase: 'before-translate' })) as typeof r1;
    const b = r2.return;
    expect(b, JSON.stringify(r2)).toBeDefined();
    expect(b.request.status).toBe(1); // VIRTIO_BLK_S_IOERR: the buffer's translation was gone
    expect(b.unmap.appliedNs).toBeLessThan(b.request.resumedNs);
    expect(b.request.accessesEndedNs).toBeLessThan(b.unmap.completedNs);
    await g.waitFor('@@HOTPLUG@@');
    expect(g.output()).toContain('RACE2-DD=1');
  });

  it('a hot-plugged disk joins the IOMMU: its slot\'s endpoint, ACCESS_PLATFORM, used translated', async () => {
    const ep0 = (await iommuRow()).endpoints.find((e) => e.id === 4)!;
    expect(await q.cmd('device_add', { driver: 'virtio-blk', id: 'hot0', file: hot, format: 'raw' })).toEqual({ return: {} });
    await g.waitFor('@@DEVKILL@@');
    const ep1 = (await iommuRow()).endpoints.find((e) => e.id === 4)!;
    expect(ep1.domain).not.toBeNull();
    expect(ep1.maps).toBeGreaterThan(ep0.maps);
    const hotProc = ((await q.cmd('query-processes')).return as { id: string; state: string }[]).find((x) => x.id === 'hot0');
    expect(hotProc?.state).toBe('running');
  });

  it('kill -9 of vmm-blk behind the IOMMU during 4 MiB of direct writes: the spare takes over, every block lands, no I/O error', async () => {
    await new Promise((r) => setTimeout(r, 300));
    expect(await q.cmd('inject-fault', { kind: 'kill', device: 'disk0' })).toHaveProperty('return.device', 'disk0');
    expect(await q.event('BACKEND_RESTARTED')).toMatchObject({ data: { device: 'disk0' } });
    const { status } = await unlessStalled(q, g.done);
    const out = g.output();
    expect(status, out).toBe(0);
    expect(out).toContain('VDB-AP=1');
    const sums = /HOT-SUM ([0-9a-f]{64}) ([0-9a-f]{64})/.exec(out);
    expect(sums?.[1]).toBe(sums?.[2]);
    expect(createHash('sha256').update(readFileSync(hot).subarray(0, 1 << 20)).digest('hex')).toBe(sums?.[1]);
    expect(out).not.toContain('DEVKILL-WRITE-FAILED');
    const dk = /DEVKILL-SUM ([0-9a-f]{64}) ([0-9a-f]{64})/.exec(out);
    expect(dk?.[1]).toBe(dk?.[2]);
    expect(createHash('sha256').update(readFileSync(img).subarray(512 * 65536, 576 * 65536)).digest('hex')).toBe(dk?.[1]);
    // The two failed reads (stray-dma, unmap-race before translation), nothing else.
    expect(out).toContain('IOERRORS=2');
    expect(out).toMatch(new RegExp(`FAULT-LINE virtio_iommu virtio\\d+: page fault from EP 6 at 0x${IOMMU_CANARY.gpa.toString(16)} \\[W\\]`));
    expect(out.match(/FAULT-LINE .*from EP 6/g)?.length).toBe(2);
  });
});
