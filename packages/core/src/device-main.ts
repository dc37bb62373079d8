// One start-up path for every device process (vmm-blk, vmm-net, vmm-iommu,
// vmm-switch, the echo test device), so each main.ts is only its kind:
//
//  1. parse argv: a bad flag is one line `COMMAND: message` on stderr (the
//     same words as the orchestrator's flag and QMP) and exit 2; --help
//     prints the usage on stdout, exit 0;
//  2. the process's logger (role, id, level: one key each per line);
//  3. the kind's start(): a failure is one fatal log line, one stderr line
//     `COMMAND: message` and exit 2 for a configuration error (exit 1 else);
//  4. SIGTERM, or the orchestrator's death, runs the service's stop() and
//     exits 0 (installDeviceProcessSignals);
//  5. one 'serving' log line, then the ready handshake (reportReady).

import { realpathSync } from 'node:fs';
import type { Logger } from 'pino';
import { DeviceProcessError, installDeviceProcessSignals, reportReady } from './device-process.ts';
import type { VirtioDeviceBackend } from './device.ts';
import { isVmmError } from './errors.ts';
import { createLogger } from './logger.ts';
import { VhostUserBackend, type VhostUserBackendOptions } from './vhost-user/backend.ts';

/** What a device process serves once started. */
export interface DeviceService {
  /** Fields of the 'serving' log line. */
  readonly serving?: Record<string, unknown>;
  /** What the ready handshake tells the parent (reportReady). */
  readonly ready: Record<string, unknown>;
  /** The vhost-user back-end it serves, if any: the handshake then also carries each queue's largest ring (`queueSizes`). */
  readonly vhostUser?: VhostUserBackend;
  /** Run once at SIGTERM (or the orchestrator's death), before exit 0. */
  stop(): void;
  /** Fields of the shutdown log line (read at shutdown: counters). */
  stopping?(): Record<string, unknown>;
}

export interface DeviceMain<A extends { readonly logLevel: string }> {
  /** The command's name, the prefix of each error line (`vmm-blk`). */
  readonly command: string;
  /** The logger's `role`. */
  readonly role: string;
  readonly usage: string;
  /** Parse argv; null for --help; throws an error naming the bad flag or value. */
  parse(argv: string[]): A | null;
  /** The logger's `device`. */
  id(args: A): string;
  /** Open and serve; null when there is nothing to serve and the process ends quietly. */
  start(args: A, log: Logger): DeviceService | null | Promise<DeviceService | null>;
  /** Exit status for a start() failure (default: 2 for a configuration VmmError, else 1). */
  exitCode?(error: unknown): number;
}

/** An argv error as one line: node:util parseArgs adds a second sentence about positionals to its unknown-option message. */
export function argvErrorLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split('\n')[0]!.replace(/\. To specify a positional.*$/, '');
}

function defaultExitCode(e: unknown): number {
  return isVmmError(e) && e.kind === 'config' ? 2 : 1;
}

/** Run a device process's main (see the file comment for what it does). */
export async function runDeviceMain<A extends { readonly logLevel: string }>(main: DeviceMain<A>, argv: string[] = process.argv.slice(2)): Promise<void> {
  let args: A | null;
  try {
    args = main.parse(argv);
  } catch (e) {
    process.stderr.write(`${main.command}: ${argvErrorLine(e)}\n`);
    process.exit(2);
  }
  if (args === null) {
    process.stdout.write(main.usage);
    return;
  }
  const log = createLogger(main.role, main.id(args), args.logLevel);
  let service: DeviceService | null;
  try {
    service = await main.start(args, log);
  } catch (e) {
    log.fatal({ err: (e as Error).message, code: (e as { code?: unknown }).code }, 'cannot start');
    process.stderr.write(`${main.command}: ${(e as Error).message}\n`);
    process.exit((main.exitCode ?? defaultExitCode)(e));
  }
  if (service === null) return;
  const s = service;
  installDeviceProcessSignals(() => {
    log.info(s.stopping?.() ?? {}, 'SIGTERM: shutting down');
    s.stop();
  });
  log.info(s.serving ?? {}, 'serving');
  reportReady(s.vhostUser ? { ...s.ready, [READY_QUEUE_SIZES]: s.vhostUser.queueMaxSizes() } : s.ready);
}

/** The ready handshake's key for each queue's largest ring, read by readyQueueSizes. */
const READY_QUEUE_SIZES = 'queueSizes';

/**
 * In the orchestrator: each of `count` queues' largest ring, from a device
 * process's ready handshake (runDeviceMain), each at most `cap` (the kind's
 * maxQueueSize); `cap` for every queue when the process did not say.
 * A value that is not a power of 2 is an error naming it.
 */
export function readyQueueSizes(ready: Record<string, unknown>, count: number, cap: number): number[] {
  const said = ready[READY_QUEUE_SIZES];
  if (said === undefined) return Array.from({ length: count }, () => cap);
  if (!Array.isArray(said) || said.length < count) throw new DeviceProcessError(`ready handshake: ${READY_QUEUE_SIZES}=${JSON.stringify(said)}: expected ${count} queue sizes`, 'ERR_DEVICE_PROCESS_READY');
  return said.slice(0, count).map((n: unknown, q) => {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || (n & (n - 1)) !== 0) throw new DeviceProcessError(`ready handshake: queue ${q} size ${JSON.stringify(n)} is not a power of 2`, 'ERR_DEVICE_PROCESS_READY');
    return Math.min(n, cap);
  });
}

/**
 * A vhost-user back-end for `device` listening on opts.socketPath, serving
 * one front-end at a time and logging each front-end's departure.
 */
export function serveVhostUser(device: VirtioDeviceBackend, opts: VhostUserBackendOptions & { log: Logger }): VhostUserBackend {
  const backend = new VhostUserBackend(device, opts);
  backend.onDisconnect = (err) => opts.log.info({ connections: backend.connections, error: err?.message }, 'ready for the next front-end');
  backend.listen();
  return backend;
}

/** True when the module of `meta` is the process's entry point (run as a command, not imported). */
export function isMainModule(meta: ImportMeta): boolean {
  return process.argv[1] !== undefined && meta.filename === realpathSync(process.argv[1]);
}
