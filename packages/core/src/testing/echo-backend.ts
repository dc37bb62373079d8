// Entry point of the echo test device process:
// `node echo-backend.ts --socket SOCKET [--queues N] [--id ID] [--log-level L]`
// (the old positional form `echo-backend.ts SOCKET [QUEUES]` is still accepted by tests).
import { DeviceOptionError, parseDeviceArgv, deviceUsage, type DeviceProcessFlags } from '../device-kind.ts';
import { runDeviceMain, serveVhostUser } from '../device-main.ts';
import { EchoDevice } from './echo-device.ts';
import { ECHO_OPTIONS } from './echo-kind.ts';

let argv = process.argv.slice(2);
if (argv[0] !== undefined && !argv[0].startsWith('--')) argv = ['--socket', argv[0], ...(argv[1] !== undefined ? ['--queues', argv[1]] : [])];

await runDeviceMain<DeviceProcessFlags>({
  command: 'vmm-echo',
  role: 'echo-backend',
  usage: deviceUsage('echo-backend.ts', 'A test device: copies each request\'s readable bytes into its writable ones.', ECHO_OPTIONS),
  parse: (a) => parseDeviceArgv('echo', ECHO_OPTIONS, a),
  id: (f) => f.id ?? f.socket,
  start(flags, log) {
    const drainTimeoutMs = process.env.ECHO_DRAIN_MS ? Number(process.env.ECHO_DRAIN_MS) : undefined;
    const last = flags.options['last-queue-size'];
    if (last !== undefined && (Number(last) & (Number(last) - 1)) !== 0) throw new DeviceOptionError(`echo: last-queue-size=${String(last)}: expected a power of 2`);
    const device = new EchoDevice(Number(flags.options.queues), last === undefined ? undefined : Number(last));
    const backend = serveVhostUser(device, { socketPath: flags.socket, log, drainTimeoutMs });
    return { ready: { socket: flags.socket }, vhostUser: backend, stop: () => backend.close() };
  },
}, argv);
