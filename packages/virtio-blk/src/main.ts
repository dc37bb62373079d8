#!/usr/bin/env node
// vmm-blk: the vhost-user-blk back-end process. One process per disk; it
// opens the image, listens on the vhost-user socket and serves one
// front-end at a time (our orchestrator, QEMU, or a benchmark driver),
// accepting the next one when a front-end leaves or restarts.

import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger, installDeviceProcessSignals, isVmmError, onControlMessage, reportReady, VhostUserBackend } from '@vmm/core';
import { BlkDevice } from './device.ts';
import { BlkConfigError } from './errors.ts';
import { FaultInjectingImage } from './faults.ts';
import { openImage, Qcow2Image, type ImageFormat } from './qcow2.ts';
import { BLOCKSTATS_QUERY } from './stats.ts';

// Reads and writes run on libuv's pool; its default of 4 threads caps the
// requests truly in flight. Must be set before the first fs call.
process.env.UV_THREADPOOL_SIZE ??= '8';

const USAGE = `usage: vmm-blk --socket PATH --image FILE [options]

Serves a raw or qcow2 image as a vhost-user-blk device (virtio 1.2 §5.2).

  --socket PATH      vhost-user unix socket to listen on (replaced if stale)
  --image FILE       disk image
  --format F         raw | qcow2 (default: probe the qcow2 magic)
  --readonly         open the image read-only and offer VIRTIO_BLK_F_RO
  --queues N         number of virtqueues, 1..64 (default 1)
  --serial ID        answer to GET_ID, at most 20 bytes (default: none)
  --id ID            device id in the logs (default: the image's file name)
  --log-level L      pino level: fatal|error|warn|info|debug|trace|silent (default info)
  --help             show this text
`;

export interface BlkOptions {
  socket: string;
  image: string;
  format: ImageFormat | undefined;
  readOnly: boolean;
  queues: number;
  serial: string;
  id: string;
  logLevel: string;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Parse the command line; throws BlkConfigError naming the bad flag or value. Returns null for --help. */
export function parseBlkArgs(argv: string[]): BlkOptions | null {
  let v;
  try {
    v = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        socket: { type: 'string' },
        image: { type: 'string' },
        format: { type: 'string' },
        readonly: { type: 'boolean' },
        queues: { type: 'string' },
        serial: { type: 'string' },
        id: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean' },
      },
    }).values;
  } catch (e) {
    throw new BlkConfigError((e as Error).message);
  }
  if (v.help) return null;
  if (!v.socket) throw new BlkConfigError('--socket PATH is required');
  if (!v.image) throw new BlkConfigError('--image FILE is required');
  if (v.format !== undefined && v.format !== 'raw' && v.format !== 'qcow2') throw new BlkConfigError(`--format ${v.format}: expected raw or qcow2`);
  const queues = v.queues === undefined ? 1 : Number(v.queues);
  if (!Number.isInteger(queues) || queues < 1 || queues > 64) throw new BlkConfigError(`--queues ${v.queues}: expected an integer from 1 to 64`);
  const serial = v.serial ?? '';
  if (new TextEncoder().encode(serial).length > 20) throw new BlkConfigError(`--serial ${serial}: longer than 20 bytes`);
  const logLevel = v['log-level'] ?? process.env.VMM_LOG_LEVEL ?? 'info';
  if (!LEVELS.includes(logLevel)) throw new BlkConfigError(`--log-level ${logLevel}: expected one of ${LEVELS.join(', ')}`);
  return {
    socket: v.socket,
    image: v.image,
    format: v.format as ImageFormat | undefined,
    readOnly: v.readonly ?? false,
    queues,
    serial,
    id: v.id ?? basename(v.image),
    logLevel,
  };
}

async function main(): Promise<void> {
  let opts: BlkOptions | null;
  try {
    opts = parseBlkArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`vmm-blk: ${(e as Error).message}\n${USAGE.split('\n')[0]}\n`);
    process.exit(2);
  }
  if (opts === null) {
    process.stdout.write(USAGE);
    return;
  }
  const log = createLogger('blk', opts.id, opts.logLevel);
  let image;
  try {
    image = await openImage(opts.image, { format: opts.format, readOnly: opts.readOnly });
  } catch (e) {
    log.fatal({ err: e, code: (e as { code?: string }).code }, 'cannot open image');
    process.stderr.write(`vmm-blk: ${(e as Error).message}\n`);
    process.exit(isVmmError(e) && e.kind === 'config' ? 2 : 1);
  }
  // Every request goes through the fault-injection layer; it is inert until
  // the orchestrator's inject-fault arms it over the IPC channel.
  const faulty = new FaultInjectingImage(image);
  const device = new BlkDevice(faulty, {
    queues: opts.queues,
    serial: opts.serial,
    discardAlignment: image instanceof Qcow2Image ? image.header.clusterSize : 4096,
    log,
  });
  // The orchestrator's control channel: queries (query-blockstats) and fault injection.
  onControlMessage((m) => {
    if (m.query === BLOCKSTATS_QUERY.query) return device.stats.snapshot();
    try {
      log.warn({ fault: m }, faulty.control(m));
    } catch (e) {
      log.error({ fault: m, err: (e as Error).message }, 'bad fault-injection command');
    }
    return undefined;
  });
  const backend = new VhostUserBackend(device, { socketPath: opts.socket, log });
  backend.onDisconnect = (err) => log.info({ connections: backend.connections, error: err?.message }, 'ready for the next front-end');
  backend.listen();
  installDeviceProcessSignals(() => {
    log.info('SIGTERM: shutting down');
    backend.close();
  });
  log.info({ image: opts.image, format: image instanceof Qcow2Image ? 'qcow2' : 'raw', capacity: image.capacity, readOnly: image.readOnly, queues: opts.queues }, 'serving');
  reportReady({ socket: opts.socket });
}

if (process.argv[1] !== undefined && import.meta.filename === (await import('node:fs')).realpathSync(process.argv[1])) {
  await main();
}
