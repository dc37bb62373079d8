// End-to-end: two `vmm run --nic switch=…` VMs (our vCPU, our virtio-mmio
// transport, the orchestrator's generic vhost-user device plugging vmm-net)
// on one vmm-switch (started by the test, so that it is the test's to stop). They copy 1 MiB over
// TCP with a matching sha256 (the sender retries until the receiver
// listens) after pinging each other; then the switch is asked for its
// address table. Bounded deadlines, no timing assertions.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger, DeviceProcess } from '@vmm/core';
import { querySwitch } from '@vmm/virtio-net';
import { VMM_CLI, runBounded, tcpReceiverScript, tcpSenderScript } from './guest-helpers.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-net-vmm-'));
const SWITCH = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));
const sw = new DeviceProcess({ name: 'switch', args: [SWITCH, '--name', `e2evmm${process.pid}`], env: { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir }, log: createLogger('net-vmm-test', undefined, 'warn') });
afterAll(async () => {
  await sw.stop();
  rmSync(dir, { recursive: true, force: true });
});

const SW = `e2evmm${process.pid}`;
const RECEIVER = tcpReceiverScript({ from: '10.0.0.2', waitS: 60 });
const SENDER = tcpSenderScript({ to: '10.0.0.3', blocks: 16, pingWaitS: 60, tries: 120, drainTicks: 1500 });

const vm = (ip: string, mac: string, script: string) =>
  runBounded(process.execPath, [VMM_CLI, 'run', '--nic', `switch=${SW},mac=${mac}`, '--append', `ip=${ip}::10.0.0.1:255.255.255.0::eth0:off`, '--exec', script], {
    timeoutMs: 850_000, env: { ...process.env, VMM_RUN_DIR: dir },
  });

describe('two vmm VMs on one vmm-switch (vmm run --nic switch=…)', () => {
  it('ping each other and copy 1 MiB over TCP with matching checksums', async () => {
    await sw.start();
    const macs = { a: '52:54:00:00:0a:0a', b: '52:54:00:00:0a:0b' };
    const [b, a] = await Promise.all([vm('10.0.0.3', macs.b, RECEIVER), vm('10.0.0.2', macs.a, SENDER)]);
    expect(a.code, `${a.stdout.slice(-2000)}\n${a.stderr.slice(-2000)}`).toBe(0);
    expect(b.code, `${b.stdout.slice(-2000)}\n${b.stderr.slice(-2000)}`).toBe(0);
    const sent = /sent (\d+) ([0-9a-f]{64})/.exec(a.stdout);
    const got = /received (\d+) ([0-9a-f]{64})/.exec(b.stdout);
    expect(sent?.[1]).toBe(String(1 << 20));
    expect(got?.slice(1)).toEqual(sent?.slice(1));
    // The VMs are gone and their NICs with them; the switch outlived them, and forwarded the copy.
    const st = await querySwitch(join(dir, `switch-${SW}.sock`));
    expect(st.ports).toEqual([]);
    expect(st.pid).toBe(sw.pid);
  });
});
