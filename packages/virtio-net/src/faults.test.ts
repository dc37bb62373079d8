// Unit tests of the fault halves: the delay line's order and budget, and the
// corruption that a frame's own checksum must catch.
import { describe, expect, it } from 'vitest';
import { parseMac } from './ctrl.ts';
import { corruptCovered, DelayLine } from './faults.ts';
import { internetChecksum } from './offload.ts';
import { ETH_HLEN, IPPROTO_ICMP, IPPROTO_UDP } from './spec.ts';
import { ipv4ChecksumsOk, rawFrame, tcp4Frame } from './testing/frames.ts';

const A = parseMac('52:54:00:00:00:0a')!;
const B = parseMac('52:54:00:00:00:0b')!;

/** An IPv4 UDP (with or without checksum) or ICMP echo frame, checksums right, `pad` bytes of Ethernet padding after it. */
function ip4Frame(proto: number, payload: number, o: { noUdpChecksum?: boolean; pad?: number; fragment?: boolean } = {}): Uint8Array {
  const tcp = tcp4Frame({ dst: B, src: A, payload: new Uint8Array(0) });
  const l3 = ETH_HLEN;
  const l4 = l3 + 20;
  const end = l4 + 8 + payload;
  const f = new Uint8Array(end + (o.pad ?? 0));
  f.set(tcp.frame.subarray(0, l4));
  const v = new DataView(f.buffer);
  f[l3 + 9] = proto;
  v.setUint16(l3 + 2, end - l3);
  if (o.fragment) v.setUint16(l3 + 6, 0x2000); // more fragments
  v.setUint16(l3 + 10, 0);
  v.setUint16(l3 + 10, internetChecksum(f, l3, l4));
  for (let i = l4 + 8; i < end; i++) f[i] = (i * 7) & 0xff;
  if (proto === IPPROTO_UDP) {
    v.setUint16(l4, 5353);
    v.setUint16(l4 + 2, 9);
    v.setUint16(l4 + 4, end - l4);
    let pseudo = IPPROTO_UDP + (end - l4);
    for (let i = l3 + 12; i < l3 + 20; i += 2) pseudo += v.getUint16(i);
    const c = internetChecksum(f, l4, end, pseudo);
    v.setUint16(l4 + 6, o.noUdpChecksum ? 0 : c === 0 ? 0xffff : c);
  } else {
    f[l4] = 8; // echo request
    v.setUint16(l4 + 4, 1);
    v.setUint16(l4 + 2, internetChecksum(f, l4, end));
  }
  return f;
}

const icmpOk = (f: Uint8Array): boolean => internetChecksum(f, ETH_HLEN + 20, ETH_HLEN + new DataView(f.buffer).getUint16(ETH_HLEN + 2)) === 0;

describe('DelayLine', () => {
  it('releases frames in arrival order once due, copies them, and refuses beyond its budget', () => {
    const d = new DelayLine(3, 1000);
    const f = new Uint8Array(100).fill(1);
    expect(d.push(f, 50)).toBe(true);
    f.fill(2); // the line holds its own copy
    expect(d.push(f, 10)).toBe(true); // due earlier, but never overtakes
    expect(d.due(20)).toBeNull();
    expect(d.nextDue()).toBe(50);
    expect(d.due(50)?.[0]).toBe(1);
    d.shift();
    expect(d.due(50)?.[0]).toBe(2);
    expect(d.push(new Uint8Array(800), 60)).toBe(true);
    expect(d.push(new Uint8Array(200), 60)).toBe(false); // 1100 bytes > 1000
    expect(d.push(new Uint8Array(10), 60)).toBe(true);
    expect(d.push(new Uint8Array(10), 60)).toBe(false); // 4 frames > 3
    expect([d.length, d.bytes]).toEqual([3, 910]);
    d.clear();
    expect([d.length, d.bytes, d.nextDue()]).toEqual([0, 0, null]);
  });

  it('keeps its memory bounded over many frames', () => {
    const d = new DelayLine(10, 1 << 20);
    for (let i = 0; i < 10_000; i++) {
      expect(d.push(new Uint8Array(64), i)).toBe(true);
      expect(d.due(i)).not.toBeNull();
      d.shift();
    }
    expect([d.length, d.bytes]).toEqual([0, 0]);
  });
});

describe('corruptCovered', () => {
  it('flips one byte the TCP, UDP or ICMP checksum covers, so the receiver\'s validation fails, wherever it lands', () => {
    let seed = 1;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let n = 0; n < 300; n++) {
      for (const [make, ok] of [
        [() => tcp4Frame({ dst: B, src: A, payload: new Uint8Array(n % 50).fill(n) }).frame, ipv4ChecksumsOk],
        [() => ip4Frame(IPPROTO_UDP, n % 40, { pad: n % 5 }), ipv4ChecksumsOk],
        [() => ip4Frame(IPPROTO_ICMP, n % 40), icmpOk],
      ] as const) {
        const f = make();
        expect(ok(f)).toBe(true);
        const before = f.slice();
        expect(corruptCovered(f, rnd)).toBe(true);
        expect(ok(f)).toBe(false);
        const changed = [...f].flatMap((x, i) => (x !== before[i] ? [i] : []));
        expect(changed.length).toBe(1);
        // Never the IP header, the L4 header's lengths or offsets, nor the padding after the IP packet.
        expect(changed[0]).toBeGreaterThanOrEqual(ETH_HLEN + 20);
        expect(changed[0]).toBeLessThan(ETH_HLEN + new DataView(f.buffer).getUint16(ETH_HLEN + 2));
      }
    }
  });

  it('leaves alone what no checksum covers: non-IP frames, fragments, UDPv4 without checksum, truncated packets', () => {
    const rnd = () => 0.5;
    for (const f of [
      rawFrame(B, A, 60),
      ip4Frame(IPPROTO_UDP, 20, { fragment: true }),
      ip4Frame(IPPROTO_UDP, 20, { noUdpChecksum: true }),
      ip4Frame(IPPROTO_UDP, 20).subarray(0, 40),
      new Uint8Array(10),
    ]) {
      const before = f.slice();
      expect(corruptCovered(f, rnd)).toBe(false);
      expect(f).toEqual(before);
    }
  });

  it('a UDP datagram without payload gets its checksum field changed, never to 0 ("no checksum")', () => {
    const f = ip4Frame(IPPROTO_UDP, 0);
    const v = new DataView(f.buffer);
    const at = ETH_HLEN + 20 + 6;
    v.setUint16(at, 0xff00);
    expect(corruptCovered(f, () => 0)).toBe(true);
    expect(v.getUint16(at)).toBe(0xffff);
  });
});
