// Flow → queue (the issue's "each flow kept on one queue by a hash of its
// 4-tuple"; RSS with Toeplitz, virtio 1.2 §5.1.6.5.7, comes later). FNV-1a
// over source and destination address and port of TCP/UDP over IPv4/IPv6;
// other frames hash to 0 (queue 0).

import { ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_TCP, IPPROTO_UDP } from './spec.ts';

function fnv(b: Uint8Array, start: number, end: number, h: number): number {
  for (let i = start; i < end; i++) h = Math.imul(h ^ b[i]!, 0x01000193) >>> 0;
  return h;
}

export function flowHash(f: Uint8Array): number {
  let l3 = ETH_HLEN;
  if (f.length < l3) return 0;
  let type = (f[12]! << 8) | f[13]!;
  if (type === ETHERTYPE_VLAN && f.length >= 18) {
    type = (f[16]! << 8) | f[17]!;
    l3 += 4;
  }
  let h = 0x811c9dc5;
  let proto: number;
  let l4: number;
  if (type === ETHERTYPE_IPV4 && f.length >= l3 + 20) {
    proto = f[l3 + 9]!;
    l4 = l3 + (f[l3]! & 0xf) * 4;
    h = fnv(f, l3 + 12, l3 + 20, h);
    // Fragments after the first carry no ports: hash them on addresses only, like their first fragment's flow is not.
    const frag = ((f[l3 + 6]! & 0x1f) << 8) | f[l3 + 7]!;
    if (frag !== 0) return h;
  } else if (type === ETHERTYPE_IPV6 && f.length >= l3 + 40) {
    proto = f[l3 + 6]!;
    l4 = l3 + 40;
    h = fnv(f, l3 + 8, l3 + 40, h);
  } else return 0;
  if ((proto === IPPROTO_TCP || proto === IPPROTO_UDP) && f.length >= l4 + 4) h = fnv(f, l4, l4 + 4, h);
  return h;
}
