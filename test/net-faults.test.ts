// Supervision and faults for NICs, end to end: a vmm VM (our vCPU) and a
// QEMU guest on one vmm-switch. While the vmm guest sends 16 MiB over TCP to
// the QEMU guest, its vmm-net is killed (QMP inject-fault kind=kill): the
// orchestrator restarts it, replays the vhost-user session (inflight region:
// receive buffers and unfinished transmits come back), the new process
// re-attaches to the switch, and the transfer completes with the sender's
// sha256. Then link-down/link-up: the guest sees its carrier go and return.
// Bounded deadlines, no timing assertions.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DeviceProcess } from '@vmm/core';
import { ExecOutputFilter, initrdWithExec, QmpClient, startGuestSession, type GuestKit } from '@vmm/orchestrator';
import { querySwitch } from '@vmm/virtio-net';
import { kitAndInitramfs, NET_MAIN, netTestFile, qemuArgs, requireQemu, runBounded, SWITCH_MAIN } from './guest-helpers.ts';

const SW = 'faults';
// The orchestrator's vmm-net processes find the switch through VMM_RUN_DIR.
const { dir, log, env, procs } = netTestFile('net-faults', { runDirEnv: true });
let kit: GuestKit;
let initramfs: string;

beforeAll(async () => {
  ({ kit, initramfs } = await kitAndInitramfs());
});

const RECEIVER = `
echo 'cat > /tmp/f' > /tmp/rx.sh; chmod +x /tmp/rx.sh
nc -l -p 5000 -e /tmp/rx.sh
echo "received $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
`;
const SENDER = `
dd if=/dev/urandom of=/tmp/f bs=64k count=256 2>/dev/null
sum=$(sha256sum /tmp/f | cut -d' ' -f1)
echo @@SENDING@@
n=0; until nc 10.0.0.3 5000 < /tmp/f; do n=$((n+1)); [ $n -gt 120 ] && exit 22; sleep 1; done
n=0; while netstat -tn | grep ':5000 ' | grep -qE 'ESTABLISHED|FIN_WAIT1|CLOSING|LAST_ACK'; do n=$((n+1)); [ $n -gt 3000 ] && exit 23; sleep 0.2; done
echo "SENT $(wc -c < /tmp/f) $sum"
echo "CARRIER $(cat /sys/class/net/eth0/carrier)"
echo @@LINK@@
n=0; while [ "$(cat /sys/class/net/eth0/carrier)" = 1 ]; do n=$((n+1)); [ $n -gt 600 ] && exit 24; sleep 0.1; done; echo "CARRIER-DOWN $(cat /sys/class/net/eth0/carrier)"
n=0; while [ "$(cat /sys/class/net/eth0/carrier)" = 0 ]; do n=$((n+1)); [ $n -gt 600 ] && exit 25; sleep 0.1; done; echo "CARRIER-UP $(cat /sys/class/net/eth0/carrier)"
`;

describe('NIC faults: a vmm guest and a QEMU guest on one vmm-switch', () => {
  requireQemu();

  it('a vmm-net killed mid-transfer is restarted and the TCP copy completes intact; link-down/up reach the guest', async () => {
    for (const [name, args] of [['switch', [SWITCH_MAIN, '--name', SW]], ['net-q', [NET_MAIN, '--socket', join(dir, 'q.sock'), '--switch', SW, '--mac', '52:54:00:00:0f:0b', '--id', 'q']]] as const) {
      const p = new DeviceProcess({ name, args: [...args], env, log });
      await p.start();
      procs.push(p);
    }
    const x = await initrdWithExec(initramfs, RECEIVER);
    const initrd = join(dir, 'initrd-q.cpio');
    writeFileSync(initrd, x.initrd);
    const qemu = runBounded('qemu-system-riscv64', [
      ...qemuArgs(kit, initrd, 1, 'console=ttyS0 panic=-1 quiet ip=10.0.0.3::10.0.0.1:255.255.255.0::eth0:off'),
      '-object', 'memory-backend-memfd,id=mem,size=512M,share=on', '-numa', 'node,memdev=mem',
      '-chardev', `socket,id=c,path=${join(dir, 'q.sock')}`, '-netdev', 'vhost-user,id=n,chardev=c,queues=1', '-device', 'virtio-net-pci,netdev=n,mac=52:54:00:00:0f:0b,romfile=',
    ], { timeoutMs: 850_000 });

    const g = await startGuestSession({ cmd: SENDER, disks: [], nics: [`switch=${SW},mac=52:54:00:00:0f:0a`], append: 'ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off' });
    const q = await QmpClient.connect(g.qmpPath);
    try {
      await g.waitFor('@@SENDING@@');
      // Kill once 2 MiB of the 16 MiB went through the switch from the vmm guest's port.
      const t0 = Date.now();
      for (;;) {
        const st = await querySwitch(join(dir, `switch-${SW}.sock`));
        if ((st.ports.find((p) => p.mac === '52:54:00:00:0f:0a')?.rx_bytes ?? 0) > 2 << 20) break;
        if (Date.now() - t0 > 600_000) throw new Error('the transfer never got going');
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(g.output()).not.toContain('SENT'); // the kill lands during the transfer
      expect(await q.cmd('inject-fault', { kind: 'kill', device: 'net0' })).toHaveProperty('return.pid');
      await g.waitFor('@@LINK@@', 800_000);
      const procsNow = (await q.cmd('query-processes')) as { return: { id?: string; role: string; restarts: number }[] };
      expect(procsNow.return.find((p) => p.role === 'net')?.restarts).toBeGreaterThanOrEqual(1);
      expect(await q.cmd('inject-fault', { kind: 'link-down', device: 'net0' })).toHaveProperty('return');
      await g.waitFor('CARRIER-DOWN 0');
      expect(await q.cmd('inject-fault', { kind: 'link-up', device: 'net0' })).toHaveProperty('return');
      await g.waitFor('CARRIER-UP 1');
    } finally {
      q.close();
    }
    const end = await g.done;
    const r = await qemu;
    let rx = '';
    new ExecOutputFilter(x.markers, (t) => (rx += t)).push(new TextEncoder().encode(r.stdout));
    expect(end.status, end.transcript.slice(-3000)).toBe(0);
    const sent = /SENT (\d+) ([0-9a-f]{64})/.exec(g.output());
    const got = /received (\d+) ([0-9a-f]{64})/.exec(rx);
    expect(sent?.[1]).toBe(String(16 << 20));
    expect(got?.slice(1), r.stdout.slice(-2000)).toEqual(sent?.slice(1));
  });
});
