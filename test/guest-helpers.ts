// Shared by the end-to-end tests: the guest kit, a bounded QEMU run of it
// (the reference machine), and a bounded `vmm` run.
import { spawn } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';
import { createLogger, type DeviceProcess, type Logger } from '@vmm/core';
import { buildInitramfs, ensureGuestKit, type GuestKit } from '@vmm/orchestrator';

export const VMM_CLI = fileURLToPath(new URL('../packages/orchestrator/src/cli.ts', import.meta.url));

/** The NIC and switch programs, as the net tests start them beside their guests. */
export const NET_MAIN = fileURLToPath(new URL('../packages/virtio-net/src/main.ts', import.meta.url));
export const SWITCH_MAIN = fileURLToPath(new URL('../packages/virtio-net/src/switch-main.ts', import.meta.url));

/**
 * What a network test file sets up around its guests: a run directory (the
 * switch sockets live there), a logger named after the test, the device
 * processes' environment, and the processes the file starts, stopped after
 * its tests with the directory removed. With `runDirEnv`, VMM_RUN_DIR points
 * at the directory while the tests run (the orchestrator's vmm-net processes
 * find the switch through it) and is restored after.
 */
export function netTestFile(name: string, opts: { runDirEnv?: boolean } = {}): { dir: string; log: Logger; env: Record<string, string>; procs: DeviceProcess[] } {
  const dir = mkdtempSync(join(tmpdir(), `vmm-${name}-`));
  const procs: DeviceProcess[] = [];
  const saved = process.env.VMM_RUN_DIR;
  if (opts.runDirEnv) beforeAll(() => { process.env.VMM_RUN_DIR = dir; });
  afterAll(async () => {
    if (opts.runDirEnv) {
      if (saved === undefined) delete process.env.VMM_RUN_DIR;
      else process.env.VMM_RUN_DIR = saved;
    }
    await Promise.all(procs.map((p) => p.stop()));
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, log: createLogger(`${name}-test`, undefined, 'warn'), env: { VMM_LOG_LEVEL: 'warn', VMM_RUN_DIR: dir }, procs };
}

export async function kitAndInitramfs(): Promise<{ kit: GuestKit; initramfs: string }> {
  const kit = await ensureGuestKit();
  const { path } = await buildInitramfs(kit);
  return { kit, initramfs: path };
}

export function requireQemu(): void {
  try {
    execFileSync('qemu-system-riscv64', ['--version'], { stdio: 'ignore' });
  } catch {
    throw new Error('qemu-system-riscv64 is missing: run scripts/setup.sh (Debian package qemu-system-misc)');
  }
}

export interface ProcResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/**
 * Runs a command with a hard deadline (SIGKILL after `timeoutMs`). `script`
 * feeds stdin: each step waits until stdout contains `waitFor`, then writes `send`.
 */
export function runBounded(cmd: string, args: string[], opts: { timeoutMs: number; script?: { waitFor: string; send: string }[]; env?: NodeJS.ProcessEnv }): Promise<ProcResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const steps = [...(opts.script ?? [])];
    let searchFrom = 0;
    const advance = (): void => {
      while (steps.length > 0) {
        const i = stdout.indexOf(steps[0]!.waitFor, searchFrom);
        if (i < 0) return;
        searchFrom = i + steps[0]!.waitFor.length;
        child.stdin.write(steps.shift()!.send);
      }
    };
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString('utf8');
      advance();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    // stdin stays open until the child exits: QEMU's stdio chardev drops
    // the guest's serial output once it has read EOF on stdin.
    child.stdin.on('error', () => {});
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
  });
}

export function qemuArgs(kit: GuestKit, initrd: string, smp: number, append: string): string[] {
  return ['-M', 'virt', '-m', '512M', '-smp', String(smp), '-bios', kit.opensbi.fwDynamic, '-kernel', kit.kernel, '-initrd', initrd, '-append', append, '-nographic', '-no-reboot'];
}

/**
 * `p`, unless vmm reports BACKEND_STALLED first (a restarted back-end with
 * requests outstanding and no completion for seconds): then fail at once
 * with the event's diagnosis (which ring, avail/used indices, inflight
 * heads) instead of waiting out the guest's whole timeout.
 */
export function unlessStalled<T>(q: { events: Record<string, unknown>[] }, p: Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const check = () => {
      const stall = q.events.find((e) => e.event === 'BACKEND_STALLED');
      if (!stall) return;
      clearInterval(timer);
      reject(new Error(`a back-end stalled after a restart: ${JSON.stringify(stall.data)}`));
    };
    const timer = setInterval(check, 250);
    p.then(
      (v) => {
        clearInterval(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearInterval(timer);
        reject(e as Error);
      },
    );
  });
}

/**
 * A guest shell line: ping `to` once a second until it answers, `fail` after
 * about `waitS` seconds. One `ping -c N -W S` is not enough when the peer
 * boots later: its few echo requests wait for ARP, which fails after 3 s,
 * and are lost, so ping waits out S without a reply although the peer came
 * up meanwhile (two vmm guests booting a few seconds apart hit that).
 */
function waitForPing(to: string, waitS: number, fail: string): string {
  return `n=0; until ping -c 1 -W 1 ${to} > /dev/null; do n=$((n+1)); [ $n -gt ${waitS} ] && ${fail}; sleep 1; done`;
}

/**
 * Guest script of the TCP copy tests: receive one connection on port 5000
 * into /tmp/f and print `received SIZE SHA256`. busybox nc -e runs `cat` on
 * the accepted connection, so it ends when the sender closes. With `pingFrom`
 * it first waits (up to `pingWaitS`) for the sender to answer a ping.
 */
export function tcpReceiverScript(ping?: { from: string; waitS: number }): string {
  return `
echo 'cat > /tmp/f' > /tmp/rx.sh; chmod +x /tmp/rx.sh
${ping ? `${waitForPing(ping.from, ping.waitS, `{ echo "no ping reply from ${ping.from}"; exit 20; }`)}\n` : ''}nc -l -p 5000 -e /tmp/rx.sh
echo "received $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
`;
}

/**
 * Guest script of the TCP copy tests: `blocks` × 64 KiB of random data,
 * printed as `sent SIZE SHA256`, pinged to and sent to `to`:5000 (retrying
 * each second until the receiver listens, `tries` times); then it waits
 * (0.2 s × `drainTicks` at most) for its last byte to be acknowledged (the
 * connection leaves ESTABLISHED/FIN_WAIT1) before the guest powers off.
 * Exit 21: no ping reply, 22: never connected, 23: never drained.
 */
export function tcpSenderScript(o: { to: string; blocks: number; pingWaitS: number; tries: number; drainTicks: number }): string {
  return `
dd if=/dev/urandom of=/tmp/f bs=64k count=${o.blocks} 2>/dev/null
echo "sent $(wc -c < /tmp/f) $(sha256sum /tmp/f | cut -d' ' -f1)"
${waitForPing(o.to, o.pingWaitS, `{ echo "ping to ${o.to} failed"; exit 21; }`)}
ping -c 3 -W ${o.pingWaitS} ${o.to} | grep -q '3 packets received' || { echo "ping to ${o.to} failed"; exit 21; }
n=0; until nc ${o.to} 5000 < /tmp/f; do n=$((n+1)); [ $n -gt ${o.tries} ] && exit 22; sleep 1; done
n=0; while netstat -tn | grep ':5000 ' | grep -qE 'ESTABLISHED|FIN_WAIT1|CLOSING|LAST_ACK'; do n=$((n+1)); [ $n -gt ${o.drainTicks} ] && exit 23; sleep 0.2; done
`;
}
