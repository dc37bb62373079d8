// Entry point of the echo test device process:
// `node echo-backend.ts --socket SOCKET [--queues N] [--id ID] [--log-level L]`
// (the old positional form `echo-backend.ts SOCKET [QUEUES]` is still accepted by tests).
import { installDeviceProcessSignals, reportReady } from '../device-process.ts';
import { deviceUsage, parseDeviceArgv } from '../device-kind.ts';
import { createLogger } from '../logger.ts';
import { VhostUserBackend } from '../vhost-user/backend.ts';
import { EchoDevice } from './echo-device.ts';
import { ECHO_OPTIONS } from './echo-kind.ts';

let argv = process.argv.slice(2);
if (argv[0] !== undefined && !argv[0].startsWith('--')) argv = ['--socket', argv[0], ...(argv[1] !== undefined ? ['--queues', argv[1]] : [])];
let flags;
try {
  flags = parseDeviceArgv('echo', ECHO_OPTIONS, argv);
} catch (e) {
  process.stderr.write(`vmm-echo: ${(e as Error).message}\n`);
  process.exit(2);
}
if (flags === null) {
  process.stdout.write(deviceUsage('echo-backend.ts', 'A test device: copies each request\'s readable bytes into its writable ones.', ECHO_OPTIONS));
  process.exit(0);
}
const log = createLogger('echo-backend', flags.id ?? flags.socket, flags.logLevel);
const drainTimeoutMs = process.env.ECHO_DRAIN_MS ? Number(process.env.ECHO_DRAIN_MS) : undefined;
const backend = new VhostUserBackend(new EchoDevice(Number(flags.options.queues)), { socketPath: flags.socket, log, drainTimeoutMs });
backend.onDisconnect = (err) => log.info({ connections: backend.connections, error: err?.message }, 'ready for the next front-end');
backend.listen();
installDeviceProcessSignals(() => backend.close());
reportReady({ socket: flags.socket });
