// Executes parsed virtio-iommu requests against the shared table
// (virtio 1.2 §5.13.6, device requirements). Every check runs before the
// first change, so a rejected request leaves the table exactly as it was:
// no half-applied ATTACH, MAP or UNMAP.

import type { IommuRequest } from './request.ts';
import {
  PROBE_PROPERTY_HEAD_LEN,
  RESV_MEM_VALUE_LEN,
  VIRTIO_IOMMU_ATTACH_F_BYPASS,
  VIRTIO_IOMMU_MAP_F_READ,
  VIRTIO_IOMMU_MAP_F_WRITE,
  VIRTIO_IOMMU_PROBE_T_RESV_MEM,
  VIRTIO_IOMMU_S_INVAL,
  VIRTIO_IOMMU_S_NOENT,
  VIRTIO_IOMMU_S_NOMEM,
  VIRTIO_IOMMU_S_OK,
  VIRTIO_IOMMU_S_RANGE,
  type IommuStatus,
} from './spec.ts';
import { M_READ, M_WRITE, type IommuTable } from './table.ts';

/** A RESV_MEM region reported by PROBE (§5.13.6.8.1); MAP requests overlapping it are refused. */
export interface ReservedRegion {
  subtype: number;
  start: number;
  /** Inclusive. */
  end: number;
}

/** What the device offers and the driver negotiated; fixed while the device is active. */
export interface IommuLimits {
  /** Page granularity in bytes: the least significant bit of page_size_mask. */
  granule: number;
  inputStart: number;
  /** Inclusive; below 2^53 so every IOVA is an exact number. */
  inputEnd: number;
  domainStart: number;
  domainEnd: number;
  /** VIRTIO_IOMMU_F_DOMAIN_RANGE negotiated: domains outside [domainStart, domainEnd] get S_RANGE. */
  domainRangeNegotiated: boolean;
  /** VIRTIO_IOMMU_F_BYPASS_CONFIG negotiated: ATTACH_F_BYPASS is a known flag. */
  bypassConfigNegotiated: boolean;
  /** Highest guest-physical address a mapping may reach (inclusive). */
  physEnd: number;
  reserved: readonly ReservedRegion[];
}

export interface ExecResult {
  status: IommuStatus;
  /** Human-readable reason for a non-OK status (logged). */
  reason?: string;
  /** The change took translations away: the request completes after table.quiescent(version). */
  invalidated?: number;
  /** PROBE: the properties bytes to write before the tail. */
  properties?: Uint8Array;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const fail = (status: IommuStatus, reason: string): ExecResult => ({ status, reason });
const hex = (v: number | bigint): string => `0x${v.toString(16)}`;

/** Endpoint leaves its domain; the domain ends with its mappings when it was the last (§5.13.6.4). */
function leave(t: IommuTable, epIndex: number): void {
  const d = t.endpointDomain(epIndex);
  if (d < 0) return;
  t.setEndpointDomain(epIndex, -1);
  if (t.endpointsOf(d).length === 0) t.endDomain(d);
}

export function execute(t: IommuTable, req: IommuRequest, lim: IommuLimits): ExecResult {
  switch (req.type) {
    case 'error':
      return fail(req.status, req.reason);

    case 'attach': {
      // §5.13.6.3 device requirements, in the order they are listed.
      if (req.reservedNonZero) return fail(VIRTIO_IOMMU_S_INVAL, 'ATTACH reserved bytes are not zero');
      const known = lim.bypassConfigNegotiated ? VIRTIO_IOMMU_ATTACH_F_BYPASS : 0;
      if ((req.flags & ~known) !== 0) return fail(VIRTIO_IOMMU_S_INVAL, `ATTACH flags ${hex(req.flags)} has unknown bits`);
      const ep = t.endpointIndex(req.endpoint);
      if (ep < 0) return fail(VIRTIO_IOMMU_S_NOENT, `ATTACH of unknown endpoint ${req.endpoint}`);
      if (lim.domainRangeNegotiated && (req.domain < lim.domainStart || req.domain > lim.domainEnd)) {
        return fail(VIRTIO_IOMMU_S_RANGE, `domain ${req.domain} is outside domain_range [${lim.domainStart}, ${lim.domainEnd}]`);
      }
      const bypass = (req.flags & VIRTIO_IOMMU_ATTACH_F_BYPASS) !== 0;
      const existing = t.findDomain(req.domain);
      if (existing >= 0 && t.domainState(existing).bypass !== bypass) {
        return fail(VIRTIO_IOMMU_S_INVAL, `ATTACH to domain ${req.domain} ${bypass ? 'with' : 'without'} ATTACH_F_BYPASS, the domain is ${bypass ? 'not ' : ''}a bypass domain`);
      }
      const old = t.endpointDomain(ep);
      if (old >= 0 && old === existing) return { status: VIRTIO_IOMMU_S_OK };
      let target = existing;
      if (target < 0) {
        // A new domain needs a free slot. If none is free but the move ends
        // the endpoint's old domain, that frees one: leave first.
        target = t.createDomain(req.domain, bypass);
        if (target < 0) {
          if (old < 0 || t.endpointsOf(old).length !== 1) return fail(VIRTIO_IOMMU_S_NOMEM, `no room for domain ${req.domain}: all ${t.sizes.maxDomains} domain slots are in use`);
          leave(t, ep);
          target = t.createDomain(req.domain, bypass);
        }
      }
      // §5.13.6.3: behave as a DETACH from the old domain, then the ATTACH.
      // Either way translations go away: the old domain's, or the identity
      // an unattached endpoint has while the bypass config field is 1.
      leave(t, ep);
      t.setEndpointDomain(ep, target);
      return { status: VIRTIO_IOMMU_S_OK, invalidated: t.bump() };
    }

    case 'detach': {
      const ep = t.endpointIndex(req.endpoint);
      if (ep < 0) return fail(VIRTIO_IOMMU_S_NOENT, `DETACH of unknown endpoint ${req.endpoint}`);
      const d = t.findDomain(req.domain);
      // Already detached (a DETACH replayed after a restart of vmm-iommu): done.
      if (d < 0 && t.endpointDomain(ep) < 0) return { status: VIRTIO_IOMMU_S_OK };
      if (d < 0) return fail(VIRTIO_IOMMU_S_INVAL, `DETACH from domain ${req.domain}, which does not exist`);
      if (t.endpointDomain(ep) !== d) return fail(VIRTIO_IOMMU_S_INVAL, `DETACH of endpoint ${req.endpoint} from domain ${req.domain}, it is not attached there`);
      leave(t, ep);
      return { status: VIRTIO_IOMMU_S_OK, invalidated: t.bump() };
    }

    case 'map': {
      // §5.13.6.5 device requirements.
      const knownFlags = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE; // MMIO is not offered (no F_MMIO)
      if ((req.flags & ~knownFlags) !== 0) return fail(VIRTIO_IOMMU_S_INVAL, `MAP flags ${hex(req.flags)} has unknown bits`);
      const d = t.findDomain(req.domain);
      if (d < 0) return fail(VIRTIO_IOMMU_S_NOENT, `MAP into domain ${req.domain}, which does not exist`);
      if (t.domainState(d).bypass) return fail(VIRTIO_IOMMU_S_INVAL, `MAP into bypass domain ${req.domain}`);
      const g = BigInt(lim.granule);
      if (req.virtStart % g !== 0n || req.physStart % g !== 0n || (req.virtEnd + 1n) % g !== 0n) {
        return fail(VIRTIO_IOMMU_S_RANGE, `MAP [${hex(req.virtStart)}, ${hex(req.virtEnd)}] → ${hex(req.physStart)} is not aligned on ${lim.granule} bytes`);
      }
      if (req.virtEnd < req.virtStart) return fail(VIRTIO_IOMMU_S_INVAL, `MAP virt_end ${hex(req.virtEnd)} is below virt_start ${hex(req.virtStart)}`);
      if (req.virtStart < BigInt(lim.inputStart) || req.virtEnd > BigInt(lim.inputEnd)) {
        return fail(VIRTIO_IOMMU_S_RANGE, `MAP [${hex(req.virtStart)}, ${hex(req.virtEnd)}] is outside input_range [${hex(lim.inputStart)}, ${hex(lim.inputEnd)}]`);
      }
      const physEnd = req.physStart + (req.virtEnd - req.virtStart);
      if (physEnd > BigInt(lim.physEnd) || physEnd > MAX_SAFE) {
        return fail(VIRTIO_IOMMU_S_RANGE, `MAP to [${hex(req.physStart)}, ${hex(physEnd)}] reaches beyond guest-physical ${hex(lim.physEnd)}`);
      }
      const vs = Number(req.virtStart);
      const ve = Number(req.virtEnd);
      for (const r of lim.reserved) {
        if (vs <= r.end && ve >= r.start) return fail(VIRTIO_IOMMU_S_INVAL, `MAP [${hex(vs)}, ${hex(ve)}] overlaps reserved region [${hex(r.start)}, ${hex(r.end)}]`);
      }
      const flags = ((req.flags & VIRTIO_IOMMU_MAP_F_READ) !== 0 ? M_READ : 0) | ((req.flags & VIRTIO_IOMMU_MAP_F_WRITE) !== 0 ? M_WRITE : 0);
      for (const m of t.overlapping(d, vs, ve)) {
        // The very same mapping again is a MAP replayed after a restart of
        // vmm-iommu (inflight resubmission): it is in place, so it succeeded.
        if (m.virtStart === vs && m.virtEnd === ve && m.physStart === Number(req.physStart) && (m.flags & (M_READ | M_WRITE)) === flags) return { status: VIRTIO_IOMMU_S_OK };
        if (vs <= m.virtEnd && ve >= m.virtStart) {
          return fail(VIRTIO_IOMMU_S_INVAL, `MAP [${hex(vs)}, ${hex(ve)}] overlaps the mapping [${hex(m.virtStart)}, ${hex(m.virtEnd)}] of domain ${req.domain}`);
        }
      }
      if (t.insertMapping(d, vs, ve, Number(req.physStart), flags) < 0) {
        return fail(VIRTIO_IOMMU_S_NOMEM, `no room for another mapping: all ${t.sizes.maxMappings} mapping slots are in use`);
      }
      return { status: VIRTIO_IOMMU_S_OK };
    }

    case 'unmap': {
      // §5.13.6.6 device requirements.
      if (req.reservedNonZero) return fail(VIRTIO_IOMMU_S_INVAL, 'UNMAP reserved bytes are not zero');
      const d = t.findDomain(req.domain);
      if (d < 0) return fail(VIRTIO_IOMMU_S_NOENT, `UNMAP in domain ${req.domain}, which does not exist`);
      if (t.domainState(d).bypass) return fail(VIRTIO_IOMMU_S_INVAL, `UNMAP in bypass domain ${req.domain}`);
      if (req.virtEnd < req.virtStart) return fail(VIRTIO_IOMMU_S_INVAL, `UNMAP virt_end ${hex(req.virtEnd)} is below virt_start ${hex(req.virtStart)}`);
      // Mappings live below 2^53; a range end beyond that covers them all the same.
      const vs = req.virtStart > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(req.virtStart);
      const ve = req.virtEnd > MAX_SAFE ? Number.MAX_SAFE_INTEGER : Number(req.virtEnd);
      const hit = t.overlapping(d, vs, ve);
      const split = hit.find((m) => m.virtStart < vs || m.virtEnd > ve);
      if (split) {
        return fail(VIRTIO_IOMMU_S_RANGE, `UNMAP [${hex(vs)}, ${hex(ve)}] would split the mapping [${hex(split.virtStart)}, ${hex(split.virtEnd)}]; nothing unmapped`);
      }
      for (const m of hit) t.removeMapping(m.slot);
      return hit.length > 0 ? { status: VIRTIO_IOMMU_S_OK, invalidated: t.bump() } : { status: VIRTIO_IOMMU_S_OK };
    }

    case 'probe': {
      if (t.endpointIndex(req.endpoint) < 0) return fail(VIRTIO_IOMMU_S_NOENT, `PROBE of unknown endpoint ${req.endpoint}`);
      const props = new Uint8Array(req.propertiesLen);
      const v = new DataView(props.buffer);
      let o = 0;
      for (const r of lim.reserved) {
        const len = PROBE_PROPERTY_HEAD_LEN + RESV_MEM_VALUE_LEN;
        if (o + len > props.length) return fail(VIRTIO_IOMMU_S_INVAL, `the reserved regions need more than the ${props.length} bytes of properties`);
        v.setUint16(o, VIRTIO_IOMMU_PROBE_T_RESV_MEM, true);
        v.setUint16(o + 2, RESV_MEM_VALUE_LEN, true);
        props[o + 4] = r.subtype;
        v.setBigUint64(o + 8, BigInt(r.start), true);
        v.setBigUint64(o + 16, BigInt(r.end), true);
        o += len;
      }
      // The rest stays zero: an empty property (type NONE) ends the list.
      return { status: VIRTIO_IOMMU_S_OK, properties: props };
    }
  }
}
