// Hostile front-ends: random message sequences (random request codes, sizes,
// payload bytes and fds) over a real socket must never take the back-end
// down. After each sequence a well-behaved front-end is served normally.
import fc from 'fast-check';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { closeFd, eventfdCreate, memfdCreate, sendWithFds, unixConnect } from '../ffi.ts';
import { createLogger } from '../logger.ts';
import { EchoDevice } from '../testing/echo-device.ts';
import { VhostUserBackend } from './backend.ts';
import { encodeHeader } from './codec.ts';
import { VhostUserDriver } from './driver.ts';
import { VhostUserFrontend } from './frontend.ts';
import { Req, VERSION } from './protocol.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-vu-fuzz-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger('fuzz-test', undefined, 'silent');

const codes = [...Object.values(Req), 0, 41, 1000];
const msgArb = fc.record({
  request: fc.constantFrom(...codes),
  flags: fc.oneof(fc.constant(VERSION), fc.constant(VERSION | 8), fc.integer({ min: 0, max: 0xff })),
  payload: fc.oneof(
    fc.uint8Array({ minLength: 0, maxLength: 48 }),
    // Plausible small values (indices, sizes) are more likely to get past validation and reach the handlers.
    fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 0, maxLength: 10 }).map((a) => new Uint8Array(a.flatMap((v) => [v, 0, 0, 0]))),
  ),
  fds: fc.array(fc.constantFrom('eventfd', 'memfd'), { maxLength: 2 }),
  truncate: fc.boolean(),
});

describe('vhost-user back-end against random messages', () => {
  it('stays up and serves the next front-end after any sequence', async () => {
    const sock = join(dir, 'fuzz.sock');
    const backend = new VhostUserBackend(new EchoDevice(2), { socketPath: sock, log, drainTimeoutMs: 50 });
    backend.listen();
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(msgArb, { minLength: 1, maxLength: 8 }), async (msgs) => {
          const fd = unixConnect(sock);
          for (const m of msgs) {
            const fds = m.fds.map((k) => (k === 'eventfd' ? eventfdCreate() : memfdCreate('fuzz', 8192)));
            const body = new Uint8Array([...encodeHeader(m.request, m.flags, m.payload.length + (m.truncate ? 4 : 0)), ...m.payload]);
            try {
              sendWithFds(fd, body, fds);
            } catch {
              // The back-end already dropped us.
            }
            for (const f of fds) closeFd(f);
          }
          closeFd(fd);
          // A clean front-end still gets service.
          const d = await VhostUserDriver.start(VhostUserFrontend.connect(sock, { log }), { queues: 1, queueSize: 8, ramSize: 1 << 20 });
          try {
            const src = d.alloc(2);
            d.mem.write(src, new Uint8Array([9, 8]));
            const dst = d.alloc(2);
            const head = d.queue(0).submit([{ addr: src, len: 2, write: false }, { addr: dst, len: 2, write: true }]);
            expect(await d.queue(0).wait()).toEqual([{ head, len: 2 }]);
          } finally {
            d.close();
          }
        }),
        { seed: 0xf022, numRuns: 60 },
      );
    } finally {
      backend.close();
    }
  });

  it('a peer that closes mid-message is dropped cleanly', async () => {
    const sock = join(dir, 'trunc.sock');
    const backend = new VhostUserBackend(new EchoDevice(1), { socketPath: sock, log });
    const closed = new Promise<Error | undefined>((resolve) => (backend.onDisconnect = resolve));
    backend.listen();
    const fd = unixConnect(sock);
    sendWithFds(fd, encodeHeader(Req.SET_FEATURES, VERSION, 8).subarray(0, 7));
    closeFd(fd);
    expect((await closed)?.message).toMatch(/mid-header/);
    // And it answers the next one.
    const f = VhostUserFrontend.connect(sock, { log });
    expect((await f.getFeatures()) & (1n << 32n)).toBe(1n << 32n);
    f.close();
    backend.close();
  });
});
