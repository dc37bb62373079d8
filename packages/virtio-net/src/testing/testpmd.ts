// Start DPDK's testpmd (Debian dpdk-dev) as a guest-less vhost-user front-end
// (net_virtio_user) or back-end (net_vhost), without hugepages, and read its
// final per-queue counters. Used by the interop test and bench/net.ts.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';

export const haveTestpmd = (): boolean => spawnSync('dpdk-testpmd', ['--version'], { stdio: 'ignore' }).error === undefined;

export interface TestpmdOptions {
  /** --file-prefix: unique per instance. */
  prefix: string;
  /** The --vdev argument, e.g. net_virtio_user0,path=S,queues=2,mac=… */
  vdev: string;
  mode: 'txonly' | 'rxonly' | 'io';
  queues?: number;
  /** lcores (default "0,1": the main core and one forwarding core). */
  lcores?: string;
  /** The main lcore (default the first of lcores); the other one forwards. */
  mainLcore?: number;
  extra?: string[];
}

export interface TestpmdRun {
  proc: ChildProcess;
  output: () => string;
  /** SIGINT, then its final statistics. */
  stop: () => Promise<TestpmdStats>;
}

export interface TestpmdStats {
  rxPackets: number;
  txPackets: number;
  rxPerQueue: number[];
}

export function parseTestpmdStats(out: string): TestpmdStats {
  const rxPerQueue: number[] = [];
  for (const m of out.matchAll(/Forward Stats for RX Port= *0\/Queue= *(\d+)[^\n]*\n\s*RX-packets: *(\d+)/g)) rxPerQueue[Number(m[1])] = Number(m[2]);
  const total = /Forward statistics for port 0\s+-+\n\s*RX-packets: *(\d+)[^\n]*\n\s*TX-packets: *(\d+)/.exec(out);
  return { rxPackets: total ? Number(total[1]) : 0, txPackets: total ? Number(total[2]) : 0, rxPerQueue };
}

export function startTestpmd(o: TestpmdOptions): TestpmdRun {
  const q = o.queues ?? 1;
  const args = [
    '-l', o.lcores ?? '0,1', ...(o.mainLcore === undefined ? [] : ['--main-lcore', String(o.mainLcore)]), '--no-huge', '-m', '512', '--no-pci', `--file-prefix=${o.prefix}`, '--vdev', o.vdev, '--',
    `--forward-mode=${o.mode}`, '-a', '--nb-cores=1', '--no-mlockall', '--total-num-mbufs=8192', `--rxq=${q}`, `--txq=${q}`,
    // A stats period keeps testpmd running with stdin closed (otherwise it waits for Enter and exits on EOF).
    '--stats-period', '60', ...(o.extra ?? []),
  ];
  const proc = spawn('dpdk-testpmd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return {
    proc,
    output: () => out,
    stop: async () => {
      proc.kill('SIGINT');
      const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
      return parseTestpmdStats(out);
    },
  };
}
