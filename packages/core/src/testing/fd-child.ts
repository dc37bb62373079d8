// Child process for ffi.test.ts: receives an eventfd over the unix socket on
// fd 3 (SCM_RIGHTS), signals it `count` times, and answers with the sum of
// the bytes it was sent.
import { eventfdWrite, recvWithFds, sendWithFds, waitReadable, closeFd } from '../ffi.ts';

const sock = 3;
const buf = new Uint8Array(64);
await waitReadable(sock);
const got = recvWithFds(sock, buf);
if (got === null || got.fds.length !== 1) {
  process.stderr.write(`fd-child: expected 1 fd, got ${JSON.stringify(got)}\n`);
  process.exit(2);
}
const efd = got.fds[0]!;
const count = buf[0]!;
for (let i = 0; i < count; i++) eventfdWrite(efd, 1n);
sendWithFds(sock, new Uint8Array([buf.subarray(0, got.bytes).reduce((a, b) => a + b, 0) & 0xff]));
closeFd(efd);
closeFd(sock);
