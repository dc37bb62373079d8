// Protocol test: a front-end that stops and restarts the ring under load, the
// way the orchestrator does when a guest resets its device mid-I/O or a
// back-end is replaced, thousands of times, with malformed chains mixed in.
// The real vmm-blk process, a real socket, memfd and eventfds. Every chain
// must come back exactly once with the right status, the process must stay
// up (a completion of a ring's previous life used to kill it with
// "completing head N that is not in flight"), and the image must hold
// exactly the last write to each block.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, DeviceProcess, VhostUserDriver, VhostUserFrontend, type Completion, type GuestAddress } from '@vmm/core';
import { afterAll, describe, expect, it } from 'vitest';
import { bit, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from './spec.ts';

const dir = mkdtempSync(join(tmpdir(), 'vmm-blk-restart-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const log = createLogger('ring-restart-test', undefined, 'warn');
const MAIN = join(import.meta.dirname, 'main.ts');
const BLOCK = 4096;
const BLOCKS = 64;
const QSIZE = 32;
const ROUNDS = 3000;

/** A small deterministic PRNG (xorshift32), so a failure replays. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n) => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

type Kind = 'read' | 'write' | 'outside' | 'badtype';
interface Pending { kind: Kind; block: number; slot: number; data?: Uint8Array; round: number }

describe('vmm-blk: rings stopped and restarted under load', () => {
  it(`${ROUNDS} rounds of kick, stop (GET_VRING_BASE or a new kick fd) and restart, with malformed chains; nothing lost, duplicated or thrown`, async () => {
    const image = join(dir, 'disk.raw');
    writeFileSync(image, new Uint8Array(BLOCKS * BLOCK));
    const sock = join(dir, 'disk.sock');
    const proc = new DeviceProcess({ name: 'ring-restart', args: [MAIN, '--socket', sock, '--file', image, '--log-level', process.env.VMM_TEST_BLK_LOG ?? 'error'], env: {}, log });
    let exited: unknown = null;
    proc.onUnexpectedExit = (info) => (exited = info);
    await proc.start();
    const fe = VhostUserFrontend.connect(sock, { log });
    const d = await VhostUserDriver.start(fe, { queues: 1, queueSize: QSIZE, ramSize: 4 << 20, deviceFeatures: bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_BLK_SIZE) | bit(VIRTIO_BLK_F_FLUSH) });
    const q = d.queue(0);
    const mem = d.mem;
    const userAddr = mem.regionList[0]!.userAddr;
    const ua = (gpa: number) => userAddr + BigInt(gpa - d.ramBase);
    const cfg = q.dq.cfg;
    // One header+status slot and one data buffer per possible chain.
    const hdrs = d.alloc(QSIZE * 32, 16);
    const bufs = d.alloc(QSIZE * BLOCK, BLOCK);
    const model = new Uint8Array(BLOCKS * BLOCK);
    const busy = new Set<number>(); // blocks with a request in flight: one at a time keeps the expected result exact
    const freeSlots = Array.from({ length: QSIZE }, (_, i) => i);
    const pending = new Map<number, Pending>();
    const r = rng(0x5eed);
    const history: string[] = [];
    const seen: string[] = [];
    const counts = { completed: 0, malformed: 0, restarts: 0, kickRestarts: 0 };

    const settle = (round: number, got: Completion[] = []) => {
      for (const c of [...got, ...q.poll()]) {
        const p = pending.get(c.head);
        if (!p) throw new Error(`round ${round}: the device returned head ${c.head}, which is not in flight`);
        pending.delete(c.head);
        seen.push(`${(counts.completed + counts.malformed * 0) & 0xffff}:${c.head}/${c.len}`);
        const status = mem.readU8((hdrs as number) + p.slot * 32 + 16);
        const dataAddr = (bufs as number) + p.slot * BLOCK;
        if (p.kind === 'outside') {
          // A chain with a buffer outside guest RAM is given back untouched (used length 0, status not written).
          expect(c.len, `round ${round}: malformed chain from round ${p.round}`).toBe(0);
          expect(status).toBe(0xff);
          counts.malformed++;
        } else if (p.kind === 'badtype') {
          expect([c.len, status]).toEqual([1, VIRTIO_BLK_S_UNSUPP]);
        } else {
          expect(status, `round ${round}: ${p.kind} of block ${p.block} from round ${p.round}`).toBe(VIRTIO_BLK_S_OK);
          if (p.kind === 'read') {
            expect(c.len).toBe(BLOCK + 1);
            const got = mem.read(dataAddr as unknown as GuestAddress, BLOCK);
            if (Buffer.compare(got, model.subarray(p.block * BLOCK, (p.block + 1) * BLOCK)) !== 0) throw new Error(`round ${round}: read of block ${p.block} returned other data`);
          } else {
            expect(c.len).toBe(1);
            model.set(p.data!, p.block * BLOCK);
          }
          busy.delete(p.block);
        }
        freeSlots.push(p.slot);
        counts.completed++;
      }
    };

    const submit = (round: number) => {
      const slot = freeSlots.pop();
      if (slot === undefined) return;
      const roll = r(100);
      const kind: Kind = roll < 40 ? 'write' : roll < 80 ? 'read' : roll < 90 ? 'outside' : 'badtype';
      let block = r(BLOCKS);
      for (let tries = 0; busy.has(block) && tries < BLOCKS; tries++) block = (block + 1) % BLOCKS;
      if (busy.has(block)) {
        freeSlots.push(slot);
        return;
      }
      const hdr = (hdrs as number) + slot * 32;
      const dataAddr = (bufs as number) + slot * BLOCK;
      mem.writeU32(hdr, kind === 'read' ? VIRTIO_BLK_T_IN : kind === 'badtype' ? 77 : VIRTIO_BLK_T_OUT);
      mem.writeU32(hdr + 4, 0);
      mem.writeU64(hdr + 8, BigInt(block * (BLOCK / 512)));
      mem.writeU8(hdr + 16, 0xff);
      let data: Uint8Array | undefined;
      if (kind === 'write') {
        data = new Uint8Array(BLOCK).fill((round * 7 + block) & 0xff);
        new DataView(data.buffer).setUint32(0, round, true);
        mem.write(dataAddr as unknown as GuestAddress, data);
      }
      // 'outside': a data buffer far below guest RAM (which starts at 2 GiB): the chain fails validation before any I/O.
      const addr = kind === 'outside' ? 0x1000 : dataAddr;
      const head = q.submit([{ addr: hdr, len: 16, write: false }, { addr, len: BLOCK, write: kind !== 'write' }, { addr: hdr + 16, len: 1, write: true }]);
      if (head === null) {
        freeSlots.push(slot);
        return;
      }
      if (kind === 'read' || kind === 'write') busy.add(block);
      pending.set(head, { kind, block, slot, data, round });
    };

    const restartAt = async (base: number) => {
      await fe.setVringNum(0, QSIZE);
      await fe.setVringBase(0, base);
      await fe.setVringAddr({ index: 0, flags: 0, desc: ua(cfg.desc as number), avail: ua(cfg.avail as number), used: ua(cfg.used as number), log: 0n });
      await fe.setVringKick(0, q.kickFd);
      await fe.setVringCall(0, q.callFd);
      await fe.setVringEnable(0, true);
    };

    const waitSome = async (round: number) => {
      if (pending.size === 0) return;
      // Bounded: a lost request or a lost call must fail here with the ring's state, not hang the test.
      const timeout = new Promise<'stall'>((resolve) => setTimeout(() => resolve('stall'), 10_000).unref());
      const got = await Promise.race([q.wait(), timeout]);
      if (got === 'stall') {
        const usedIdx = mem.readU16((cfg.used as number) + 2);
        const availIdx = mem.readU16((cfg.avail as number) + 2);
        throw new Error(`round ${round}: no completion for 10 s; avail.idx ${availIdx}, used.idx ${usedIdx}, ${pending.size} chains in flight (heads ${[...pending.keys()].join(',')})`);
      }
      settle(round, got);
    };

    try {
      for (let round = 0; round < ROUNDS; round++) {
        for (let n = 1 + r(5); n > 0; n--) submit(round);
        const mode = r(10);
        history.push(`r${round}:m${mode}:a${mem.readU16((cfg.avail as number) + 2)}:u${mem.readU16((cfg.used as number) + 2)}`);
        if (mode < 4) {
          // Stop right after the kick: GET_VRING_BASE waits for what the device took, so afterwards every taken chain is in the used ring.
          const base = await fe.getVringBase(0);
          settle(round);
          const availIdx = mem.readU16((cfg.avail as number) + 2);
          expect(pending.size, `round ${round}: after GET_VRING_BASE ${base} (avail.idx ${availIdx}) chains are still out (used.idx now ${mem.readU16((cfg.used as number) + 2)}): ${JSON.stringify([...pending].map(([h, p]) => [h, p.kind, p.round]))} ${history.slice(-4).join(' ')} used ring ${Array.from({ length: 14 }, (_, k) => { const i = (mem.readU16((cfg.used as number) + 2) - 14 + k) & 0xffff; const o = (cfg.used as number) + 4 + (i % QSIZE) * 8; return `${i}:${mem.readU32(o)}/${mem.readU32(o + 4)}`; }).join(' ')} seen ${seen.slice(-14).join(' ')}`).toBe((availIdx - base) & 0xffff);
          await restartAt(base);
          counts.restarts++;
        } else if (mode < 7) {
          // Set the ring up again without stopping it (a new kick fd, base = used.idx as after a crash): the back-end lets the
          // old ring's requests finish (their late data must not land in reused buffers), then resumes from the inflight region.
          await restartAt(mem.readU16((cfg.used as number) + 2));
          counts.kickRestarts++;
        }
        if (freeSlots.length < 4 || r(3) === 0) await waitSome(round);
        else settle(round);
        expect(exited, `vmm-blk died in round ${round}: ${proc.stderrTail}`).toBeNull();
      }
      while (pending.size > 0) await waitSome(ROUNDS);
      expect(exited, proc.stderrTail).toBeNull();
      expect(counts.malformed).toBeGreaterThan(100);
      expect(counts.restarts + counts.kickRestarts).toBeGreaterThan(ROUNDS / 2);
      d.close();
    } finally {
      await proc.stop();
    }
    expect(proc.stderrTail).not.toMatch(/uncaught|not in flight/i);
    expect(Buffer.compare(readFileSync(image), model)).toBe(0);
  });
});
