import { describe, expect, it } from 'vitest';
import {
  configPayload, decodeHeader, encodeHeader, inflightPayload, logPayload, memTable, singleRegion, validateReply, validateRequest, vringAddr, vringState, u64,
  VhostUserProtocolError, type Message,
} from './codec.ts';
import { FLAG_NEED_REPLY, FLAG_REPLY, Req, VERSION, VRING_NOFD_MASK } from './protocol.ts';

const msg = (request: number, payload: Uint8Array, fds: number[] = [], flags = VERSION): Message => ({ request, flags, payload, fds });
const code = (f: () => void) => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(VhostUserProtocolError);
    return (e as VhostUserProtocolError).code;
  }
  return 'ok';
};

describe('vhost-user codec', () => {
  it('round-trips headers and payloads', () => {
    expect(decodeHeader(encodeHeader(Req.SET_FEATURES, VERSION | FLAG_NEED_REPLY, 8))).toEqual({ request: 2, flags: 9, size: 8 });
    expect(u64.decode(u64.encode(0xdead_beef_cafen))).toBe(0xdead_beef_cafen);
    expect(vringState.decode(vringState.encode({ index: 3, num: 256 }))).toEqual({ index: 3, num: 256 });
    const a = { index: 1, flags: 0, desc: 0x7f00_0000_1000n, used: 0x7f00_0000_3000n, avail: 0x7f00_0000_2000n, log: 0n };
    expect(vringAddr.decode(vringAddr.encode(a))).toEqual(a);
    const r = { guestPhysAddr: 0x8000_0000n, memorySize: 0x1000_0000n, userAddr: 0x7f12_3400_0000n, mmapOffset: 0n };
    expect(memTable.decode(memTable.encode([r, r]))).toEqual([r, r]);
    expect(singleRegion.decode(singleRegion.encode(r))).toEqual(r);
    const c = configPayload.decode(configPayload.encode({ offset: 4, data: new Uint8Array([1, 2, 3]) }));
    expect([c.offset, c.size, [...c.data]]).toEqual([4, 3, [1, 2, 3]]);
    const i = { mmapSize: 4096n, mmapOffset: 0n, numQueues: 2, queueSize: 128 };
    expect(inflightPayload.decode(inflightPayload.encode(i))).toEqual(i);
    expect(logPayload.decode(logPayload.encode({ mmapSize: 1n << 40n, mmapOffset: 4096n }))).toEqual({ mmapSize: 1n << 40n, mmapOffset: 4096n });
  });

  it('rejects bad headers', () => {
    expect(code(() => decodeHeader(encodeHeader(1, 0x2, 0)))).toBe('ERR_VHOST_USER_VERSION');
    expect(code(() => decodeHeader(encodeHeader(1, VERSION, 1 << 20)))).toBe('ERR_VHOST_USER_SIZE');
  });

  it('validates payload size and fd count per request', () => {
    const region = { guestPhysAddr: 0n, memorySize: 4096n, userAddr: 0n, mmapOffset: 0n };
    expect(code(() => validateRequest(msg(Req.GET_FEATURES, new Uint8Array(0))))).toBe('ok');
    expect(code(() => validateRequest(msg(Req.GET_FEATURES, new Uint8Array(8))))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.SET_FEATURES, new Uint8Array(4))))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.SET_MEM_TABLE, memTable.encode([region, region]), [5, 6])))).toBe('ok');
    expect(code(() => validateRequest(msg(Req.SET_MEM_TABLE, memTable.encode([region, region]), [5])))).toBe('ERR_VHOST_USER_FDS');
    expect(code(() => validateRequest(msg(Req.SET_MEM_TABLE, memTable.encode(Array(9).fill(region)), Array(9).fill(5))))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.SET_MEM_TABLE, memTable.encode([region]).subarray(0, 30), [5])))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.SET_VRING_KICK, u64.encode(0n), [5])))).toBe('ok');
    expect(code(() => validateRequest(msg(Req.SET_VRING_KICK, u64.encode(VRING_NOFD_MASK), [])))).toBe('ok');
    expect(code(() => validateRequest(msg(Req.SET_VRING_CALL, u64.encode(VRING_NOFD_MASK), [5])))).toBe('ERR_VHOST_USER_FDS');
    expect(code(() => validateRequest(msg(Req.ADD_MEM_REG, singleRegion.encode(region), [])))).toBe('ERR_VHOST_USER_FDS');
    expect(code(() => validateRequest(msg(Req.REM_MEM_REG, singleRegion.encode(region), [5])))).toBe('ok');
    expect(code(() => validateRequest(msg(Req.GET_CONFIG, configPayload.encode({ offset: 0, data: new Uint8Array(300) }))))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.GET_CONFIG, configPayload.encode({ offset: 0, data: new Uint8Array(8) }).subarray(0, 16))))).toBe('ERR_VHOST_USER_SIZE');
    expect(code(() => validateRequest(msg(Req.SET_INFLIGHT_FD, new Uint8Array(24), [])))).toBe('ERR_VHOST_USER_FDS');
    expect(code(() => validateRequest(msg(Req.SET_LOG_BASE, new Uint8Array(16), [5])))).toBe('ERR_VHOST_USER_UNKNOWN_REQUEST');
    expect(code(() => validateRequest(msg(12345, new Uint8Array(0))))).toBe('ERR_VHOST_USER_UNKNOWN_REQUEST');
    expect(code(() => validateRequest(msg(Req.GET_FEATURES, new Uint8Array(0), [], VERSION | FLAG_REPLY)))).toBe('ERR_VHOST_USER_FLAGS');
  });

  it('validates replies against the request they answer', () => {
    const reply = (request: number, payload: Uint8Array, fds: number[] = []) => msg(request, payload, fds, VERSION | FLAG_REPLY);
    expect(code(() => validateReply(reply(Req.GET_FEATURES, u64.encode(1n)), Req.GET_FEATURES, false))).toBe('ok');
    expect(code(() => validateReply(reply(Req.GET_FEATURES, u64.encode(1n)), Req.GET_QUEUE_NUM, false))).toBe('ERR_VHOST_USER_REPLY');
    expect(code(() => validateReply(msg(Req.GET_FEATURES, u64.encode(1n)), Req.GET_FEATURES, false))).toBe('ERR_VHOST_USER_FLAGS');
    expect(code(() => validateReply(reply(Req.GET_INFLIGHT_FD, inflightPayload.encode({ mmapSize: 1n, mmapOffset: 0n, numQueues: 1, queueSize: 1 })), Req.GET_INFLIGHT_FD, false))).toBe('ERR_VHOST_USER_FDS');
    expect(code(() => validateReply(reply(Req.SET_MEM_TABLE, u64.encode(0n)), Req.SET_MEM_TABLE, true))).toBe('ok');
  });
});
