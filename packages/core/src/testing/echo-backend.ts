// Entry point of the echo test device process: `node echo-backend.ts SOCKET [QUEUES]`.
import { installDeviceProcessSignals, reportReady } from '../device-process.ts';
import { createLogger } from '../logger.ts';
import { VhostUserBackend } from '../vhost-user/backend.ts';
import { EchoDevice } from './echo-device.ts';

const [socketPath, queues] = process.argv.slice(2);
if (!socketPath) {
  process.stderr.write('usage: echo-backend.ts SOCKET [QUEUES]\n');
  process.exit(2);
}
const log = createLogger('echo-backend', socketPath);
const drainTimeoutMs = process.env.ECHO_DRAIN_MS ? Number(process.env.ECHO_DRAIN_MS) : undefined;
const backend = new VhostUserBackend(new EchoDevice(Number(queues ?? 2)), { socketPath, log, drainTimeoutMs });
backend.onDisconnect = (err) => log.info({ connections: backend.connections, error: err?.message }, 'ready for the next front-end');
backend.listen();
installDeviceProcessSignals(() => backend.close());
reportReady({ socket: socketPath });
