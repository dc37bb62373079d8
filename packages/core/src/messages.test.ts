import { describe, expect, it } from 'vitest';
import { decodeMessage, encodeMessage, frameMessage, MessageDeframer, MessageError } from './messages.ts';

type Ready = { type: 'ready'; socket: string; features: bigint; queues: number[] };
const isReady = (v: unknown): v is Ready => (v as Ready).type === 'ready';

describe('typed messages', () => {
  it('round-trip with bigints intact', () => {
    const m: Ready = { type: 'ready', socket: '/run/x.sock', features: 0xffff_ffff_ffff_fff0n, queues: [1, 2] };
    expect(decodeMessage(encodeMessage(m), isReady)).toEqual(m);
  });
  it('reject garbage and unexpected types with typed errors', () => {
    expect(() => decodeMessage(new Uint8Array([0xc1]), isReady)).toThrow(MessageError);
    expect(() => decodeMessage(encodeMessage({ type: 'other' }), isReady)).toThrow(/unexpected message type other/);
    expect(() => decodeMessage(encodeMessage({ kind: 1 } as never), isReady)).toThrow(/without a string/);
  });
  it('reassembles frames split at any byte', () => {
    const a = frameMessage({ type: 'a' });
    const b = frameMessage({ type: 'b', n: 1 } as never);
    const all = new Uint8Array([...a, ...b]);
    for (let cut = 0; cut <= all.length; cut++) {
      const d = new MessageDeframer();
      const bodies = [...d.push(all.subarray(0, cut)), ...d.push(all.subarray(cut))];
      expect(bodies.map((x) => decodeMessage(x, (v): v is { type: string } => v !== null).type)).toEqual(['a', 'b']);
    }
    expect(() => new MessageDeframer().push(new Uint8Array([0xff, 0xff, 0xff, 0xff]))).toThrow(MessageError);
  });
});
