// Measures the vhost-user data path of core alone: our driver (this process)
// → kick eventfd → our back-end with the echo device (a child process) →
// call eventfd → back. Prints requests/s at queue depth 1 and 32, with
// EVENT_IDX on. Usage: pnpm exec node packages/core/scripts/echo-bench.ts [seconds]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceProcess, VhostUserDriver, VhostUserFrontend, createLogger } from '@vmm/core';

const seconds = Number(process.argv[2] ?? 2);
const dir = mkdtempSync(join(tmpdir(), 'vmm-echo-bench-'));
const sock = join(dir, 'echo.sock');
const log = createLogger('echo-bench', undefined, 'warn');
const proc = new DeviceProcess({ name: 'echo', args: [join(import.meta.dirname, '../src/testing/echo-backend.ts'), sock, '1'], env: { VMM_LOG_LEVEL: 'warn' }, log });
await proc.start();
const d = await VhostUserDriver.start(VhostUserFrontend.connect(sock, { log }), { queues: 1, queueSize: 128, eventIdx: true });
const q = d.queue(0);
const src = d.alloc(512);
const dst = d.alloc(512);
d.mem.fill(src, 512, 1);

for (const depth of [1, 32]) {
  let done = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(seconds * 1e9);
  for (let i = 0; i < depth; i++) q.submit([{ addr: src, len: 512, write: false }, { addr: dst, len: 512, write: true }]);
  while (process.hrtime.bigint() < end) {
    const got = await q.wait();
    done += got.length;
    for (let i = 0; i < got.length; i++) q.submit([{ addr: src, len: 512, write: false }, { addr: dst, len: 512, write: true }]);
  }
  while (q.dq.freeDescriptors < 128) await q.wait();
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`depth ${depth}: ${Math.round(done / dt)} requests/s (${((dt / done) * 1e6).toFixed(1)} µs each), kicks ${q.kicks}`);
}
d.close();
await proc.stop();
rmSync(dir, { recursive: true, force: true });
