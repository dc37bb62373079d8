// Interop with a real peer: DPDK testpmd's virtio_user PMD as the vhost-user
// front-end of two vmm-net processes on one vmm-switch, two queue pairs
// (vhost-user MQ protocol feature), txonly on one side, rxonly on the other.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { querySwitch } from './switch-client.ts';
import { NET_MAIN, netProcesses, SWITCH_MAIN } from './testing/processes.ts';
import { haveTestpmd, startTestpmd } from './testing/testpmd.ts';

const { dir, start } = netProcesses('net-dpdk');

describe.skipIf(!haveTestpmd())('DPDK testpmd as front-end', () => {
  it('moves frames from a txonly testpmd to an rxonly testpmd through vmm-net and vmm-switch, spread over both queues', async () => {
    await start('switch', [SWITCH_MAIN, '--name', 'dpdk0']);
    for (const n of ['a', 'b']) await start(`net-${n}`, [NET_MAIN, '--socket', join(dir, `${n}.sock`), '--switch', 'dpdk0', '--queues', '2', '--mac', `52:54:00:00:02:0${n === 'a' ? 'a' : 'b'}`, '--id', n]);
    const rx = startTestpmd({ prefix: `vmmrx${process.pid}`, vdev: `net_virtio_user0,path=${join(dir, 'b.sock')},queues=2,mac=52:54:00:00:02:0b`, mode: 'rxonly', queues: 2 });
    await new Promise((r) => setTimeout(r, 3000));
    const tx = startTestpmd({
      prefix: `vmmtx${process.pid}`, vdev: `net_virtio_user0,path=${join(dir, 'a.sock')},queues=2,mac=52:54:00:00:02:0a`, mode: 'txonly', queues: 2,
      extra: ['--txonly-multi-flow', '--eth-peer=0,52:54:00:00:02:0b'],
    });
    await new Promise((r) => setTimeout(r, 6000));
    const txStats = await tx.stop();
    await new Promise((r) => setTimeout(r, 1000));
    const sw = await querySwitch(join(dir, 'switch-dpdk0.sock'));
    const rxStats = await rx.stop();
    expect(txStats.txPackets, tx.output().slice(-2000)).toBeGreaterThan(1000);
    expect(rxStats.rxPackets, rx.output().slice(-2000)).toBeGreaterThan(1000);
    // Both receive queues got traffic: flows were spread by their 4-tuple hash.
    expect(rxStats.rxPerQueue.length).toBe(2);
    expect(rxStats.rxPerQueue.every((n) => n > 0)).toBe(true);
    // Everything testpmd received went through the switch to b's port; what it sent came in on a's.
    const ports = new Map(sw.ports.map((p) => [p.name, p]));
    expect(ports.get('b')!.tx_packets).toBeGreaterThanOrEqual(rxStats.rxPackets);
    expect(ports.get('a')!.rx_packets).toBeLessThanOrEqual(txStats.txPackets);
    expect(ports.get('a')!.rx_packets).toBe(ports.get('b')!.tx_packets + ports.get('b')!.tx_dropped);
  });
});
