// Protocol test: a real vmm-switch process and three real vmm-net processes,
// each driven over vhost-user by a guest-less virtio-net driver with its own
// guest-RAM memfd. Frames go NIC → ring → switch → ring → NIC.
import { join } from 'node:path';
import type { DeviceProcess } from '@vmm/core';
import { describe, expect, it } from 'vitest';
import { BROADCAST, formatMac, parseMac } from './ctrl.ts';
import { querySwitch } from './switch-client.ts';
import { NicDriver } from './testing/nic-driver.ts';
import { NET_MAIN, netProcesses, SWITCH_MAIN } from './testing/processes.ts';
import type { NetStats } from './device.ts';
import { NETSTATS_QUERY } from './kind.ts';
import { rawFrame } from './testing/frames.ts';

const { dir, start, closers } = netProcesses('net');

const MACS = ['52:54:00:00:01:0a', '52:54:00:00:01:0b', '52:54:00:00:01:0c'].map((m) => parseMac(m)!);

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const t0 = Date.now();
  while (!(await ok())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('vmm-switch with vmm-net NICs', () => {
  it('floods, learns, forwards unicast only to its port, and survives a switch restart', async () => {
    const sw = await start('switch', [SWITCH_MAIN, '--name', 'lab0']);
    const nics: NicDriver[] = [];
    for (const [i, mac] of MACS.entries()) {
      const sock = join(dir, `nic${i}.sock`);
      await start(`nic${i}`, [NET_MAIN, '--socket', sock, '--switch', join(dir, 'switch-lab0.sock'), '--mac', formatMac(mac), '--id', `nic${i}`]);
      const d = await NicDriver.connect(sock);
      closers.push(() => d.close());
      nics.push(d);
    }
    const [a, b, c] = nics as [NicDriver, NicDriver, NicDriver];
    const [ma, mb] = MACS as [number, number, number];
    const swSock = join(dir, 'switch-lab0.sock');

    // Broadcast from A reaches B and C (flooding), not A itself.
    await a.send(rawFrame(BROADCAST, ma, 60, 1));
    await b.until(1);
    await c.until(1);
    expect(b.received[0]!.frame).toEqual(rawFrame(BROADCAST, ma, 60, 1));
    // B answers A: A's address was learned, so only A gets it.
    await b.send(rawFrame(ma, mb, 100, 2));
    await a.until(1);
    expect(a.received[0]!.frame).toEqual(rawFrame(ma, mb, 100, 2));
    // 300 frames A → B, in order and intact, none of them to C.
    for (let i = 0; i < 300; i++) await a.send(rawFrame(mb, ma, 64 + (i % 1400), i));
    await b.until(301);
    b.received.slice(1).forEach((r, i) => expect(r.frame).toEqual(rawFrame(mb, ma, 64 + (i % 1400), i)));
    const st = await querySwitch(swSock);
    expect(st.macs.map((m) => m.mac).sort()).toEqual([formatMac(ma), formatMac(mb)]);
    const byName = new Map(st.ports.map((p) => [p.name, p]));
    expect(byName.get('nic2')!.tx_packets).toBe(1);
    expect(byName.get('nic1')!.tx_packets).toBe(301);
    expect(byName.get('nic0')!).toMatchObject({ rx_packets: 301, tx_packets: 1, tx_dropped: 0 });
    expect(c.received.length).toBe(1);

    // The switch is killed: the NICs (given its socket path, so none starts one itself) reconnect to its replacement.
    await sw.kill('SIGKILL');
    await start('switch2', [SWITCH_MAIN, '--name', 'lab0']);
    await waitFor('3 NICs re-attached', async () => (await querySwitch(swSock)).ports.length === 3);
    await a.send(rawFrame(BROADCAST, ma, 60, 7));
    await b.until(302);
    expect(b.received[301]!.frame).toEqual(rawFrame(BROADCAST, ma, 60, 7));
  });

  it('with busy-poll on in the NICs and the switch, frames still arrive in order, intact, none lost at a kick-off/on turn', async () => {
    await start('switch-bp', [SWITCH_MAIN, '--name', 'bp0', '--busy-poll', '200']);
    const nics: NicDriver[] = [];
    for (const i of [0, 1]) {
      const sock = join(dir, `bp${i}.sock`);
      await start(`bp${i}`, [NET_MAIN, '--socket', sock, '--switch', 'bp0', '--mac', formatMac(MACS[i]!), '--id', `bp${i}`, '--busy-poll', '200']);
      const d = await NicDriver.connect(sock);
      closers.push(() => d.close());
      nics.push(d);
    }
    const [a, b] = nics as [NicDriver, NicDriver];
    // In bursts and one by one with pauses longer than the window, so frames come both while the NICs poll and after they slept.
    for (let i = 0; i < 400; i++) {
      await a.send(rawFrame(MACS[1]!, MACS[0]!, 64 + (i % 900), i));
      if (i % 50 === 49) {
        await b.until(i + 1);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    await b.until(400);
    b.received.forEach((r, i) => expect(r.frame).toEqual(rawFrame(MACS[1]!, MACS[0]!, 64 + (i % 900), i)));
    const st = await querySwitch(join(dir, 'switch-bp0.sock'));
    expect(st.ports.find((x) => x.name === 'bp1')).toMatchObject({ tx_packets: 400, tx_dropped: 0 });
  });

  it('starts a named switch that is not running yet, which outlives the NIC', async () => {
    const nic = await start('nic-od', [NET_MAIN, '--socket', join(dir, 'od.sock'), '--switch', 'ondemand', '--mac', '52:54:00:00:01:0d', '--id', 'od']);
    const st = await querySwitch(join(dir, 'switch-ondemand.sock'));
    expect(st.ports.map((p) => p.name)).toEqual(['od']);
    expect(st.pid).not.toBe(nic.pid);
    await nic.stop();
    await waitFor('the NIC detached', async () => (await querySwitch(join(dir, 'switch-ondemand.sock'))).ports.length === 0);
    process.kill(st.pid, 'SIGTERM');
  });

  it('a port whose NIC takes no frames fills, drops and counts, and the other ports keep receiving everything', async () => {
    await start('switch-full', [SWITCH_MAIN, '--name', 'full0', '--ring-kib', '256']);
    const mk = async (i: number, receive: boolean): Promise<NicDriver> => {
      const sock = join(dir, `full${i}.sock`);
      await start(`full${i}`, [NET_MAIN, '--socket', sock, '--switch', 'full0', '--mac', formatMac(MACS[i]!), '--id', `full${i}`]);
      const d = await NicDriver.connect(sock, { receive });
      closers.push(() => d.close());
      return d;
    };
    const a = await mk(0, true);
    const stuck = await mk(1, false);
    const c = await mk(2, true);
    // Broadcasts reach every port: the stuck one's ring (256 KiB, about 1500 of these 128-byte records) fills; sent in steps
    // of 50 the live port's never does.
    const n = 2000;
    for (let i = 0; i < n; i++) {
      await a.send(rawFrame(BROADCAST, MACS[0]!, 100, i));
      if (i % 50 === 49) await c.until(i + 1);
    }
    c.received.forEach((r, i) => expect(r.frame).toEqual(rawFrame(BROADCAST, MACS[0]!, 100, i)));
    const st = await querySwitch(join(dir, 'switch-full0.sock'));
    const p = new Map(st.ports.map((x) => [x.name, x]));
    expect(p.get('full2')).toMatchObject({ tx_packets: n, tx_dropped: 0 });
    expect(p.get('full1')!.tx_dropped).toBeGreaterThan(0);
    expect(p.get('full1')!.tx_packets + p.get('full1')!.tx_dropped).toBe(n);
    expect(stuck.received.length).toBe(0);
  });

  it('SET_VRING_ENABLE 0 stops the receive queue in the device (frames wait in its port), 1 starts it again where it was', async () => {
    await start('switch-en', [SWITCH_MAIN, '--name', 'en0']);
    const mk = async (i: number): Promise<{ d: NicDriver; p: DeviceProcess }> => {
      const sock = join(dir, `en${i}.sock`);
      const p = await start(`en${i}`, [NET_MAIN, '--socket', sock, '--switch', 'en0', '--mac', formatMac(MACS[i]!), '--id', `en${i}`]);
      const d = await NicDriver.connect(sock);
      closers.push(() => d.close());
      return { d, p };
    };
    const a = await mk(0);
    const b = await mk(1);
    const stats = async () => (await b.p.request(NETSTATS_QUERY)) as NetStats & { pairsRunning: number[] };
    await a.d.send(rawFrame(MACS[1]!, MACS[0]!, 80, 0));
    await b.d.until(1);
    expect((await stats()).pairsRunning).toEqual([0]);
    await b.d.d.frontend.setVringEnable(0, false);
    const st = await stats();
    expect(st).toMatchObject({ pairsRunning: [], queue_stops: 1 });
    // The switch delivers to b's port; b's device holds them there, the driver gets nothing while its ring is disabled.
    for (let i = 1; i <= 5; i++) await a.d.send(rawFrame(MACS[1]!, MACS[0]!, 80 + i, i));
    await waitFor('5 frames in b\'s port', async () => (await querySwitch(join(dir, 'switch-en0.sock'))).ports.find((x) => x.name === 'en1')?.tx_packets === 6);
    expect((await stats()).rx_packets).toBe(1);
    expect(b.d.received.length).toBe(1);
    await b.d.d.frontend.setVringEnable(0, true);
    await b.d.until(6);
    b.d.received.forEach((r, i) => expect(r.frame).toEqual(rawFrame(MACS[1]!, MACS[0]!, 80 + i, i)));
    expect(await stats()).toMatchObject({ pairsRunning: [0], rx_packets: 6 });
    // The other direction kept working throughout.
    await b.d.send(rawFrame(MACS[0]!, MACS[1]!, 70, 9));
    await a.d.until(1);
  });
});
