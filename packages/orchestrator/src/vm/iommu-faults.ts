// The IOMMU's faults as the management API injects them (`inject-fault
// kind=stray-dma | unmap-race device=ID`): the device process does the
// access (its DmaFaults, through the same translated guest memory its
// requests use), vmm-iommu does the UNMAP (through the same execute + grace
// period a guest UNMAP takes). The orchestrator checks the target, drives
// the steps in order and answers with what each process measured.
// `kind=iommu-kill` is the generic SIGKILL of vmm-iommu (its supervision
// restarts it over the table file).

import { parseDeviceOptions } from '@vmm/core';
import { reachable } from '@vmm/iommu/kind';
import { QmpError } from '../api/control.ts';
import { endpointOf, IOMMU_CANARY } from './iommu.ts';
import type { VhostUserDevice } from './vhost-device.ts';

/** Faults that need the device to be an endpoint of the VM's IOMMU. */
export const IOMMU_FAULTS = ['stray-dma', 'unmap-race'] as const;
export type IommuFault = (typeof IOMMU_FAULTS)[number];

export function isIommuFault(kind: string): kind is IommuFault {
  return (IOMMU_FAULTS as readonly string[]).includes(kind);
}

/** How long the device waits for its next data request (the guest's I/O decides when that is). */
const NEXT_REQUEST_TIMEOUT_MS = 60_000;

const generic = (m: string): QmpError => new QmpError('GenericError', `inject-fault: ${m}`);

/**
 * Runs an IOMMU fault on `dev` (an endpoint of `iommu`): the kind's own
 * option schema parses the arguments (`faults[kind].options`).
 */
export async function injectIommuFault(kind: IommuFault, dev: VhostUserDevice, iommu: VhostUserDevice | null, args: Record<string, unknown>, keys: readonly string[]): Promise<Record<string, unknown>> {
  const id = dev.spec.id;
  const fault = dev.kind.faults?.[kind];
  if (!fault) throw generic(`kind=${kind}: does not apply to ${dev.kind.name} ${id} (its faults: ${Object.keys(dev.kind.faults ?? {}).join(', ') || 'none'})`);
  const endpoint = endpointOf(dev.spec);
  if (endpoint === null || iommu === null) {
    throw generic(`kind=${kind}: ${dev.kind.name} ${id} is not behind an IOMMU (${iommu === null ? 'the VM has no --iommu' : 'it does not translate its DMA through it'})`);
  }
  const o = parseDeviceOptions(`inject-fault ${kind}`, fault.options, args, keys);
  const table = String(dev.spec.options['iommu-table']);
  if (kind === 'stray-dma') {
    const iova = o.iova === undefined ? IOMMU_CANARY.gpa : Number(o.iova);
    // A stray access must really be outside the mappings, or the injection would prove nothing.
    if (reachable(table, endpoint, iova)) throw generic(`kind=stray-dma: iova=0x${iova.toString(16)} is mapped for endpoint ${endpoint} (${id}); pick an address outside its mappings`);
    const armed = await ask(dev, { ...fault.message({ ...o, iova }) });
    return { device: id, endpoint, iova, ...(armed as object) };
  }
  // unmap-race: 1. the device holds its next data request and says which buffer it holds;
  const held = (await ask(dev, fault.message(o), NEXT_REQUEST_TIMEOUT_MS)) as { iova: number; len: number; access: string; phase: string; heldNs: number };
  // 2. vmm-iommu UNMAPs the mapping under that buffer, as a guest's UNMAP, and answers once the UNMAP is complete;
  let unmap: Record<string, unknown> | null = null;
  let unmapError: string | null = null;
  try {
    unmap = (await ask(iommu, { fault: 'unmap', endpoint, iova: held.iova }, Number(o['hold-ms']) + 10_000)) as Record<string, unknown>;
  } catch (e) {
    unmapError = (e as Error).message;
  }
  // 3. how the held request ended.
  const request = await ask(dev, { query: 'unmap-race-result' }, 10_000);
  if (unmapError !== null) throw generic(`kind=unmap-race: ${id}: the UNMAP failed: ${unmapError} (request: ${JSON.stringify(request)})`);
  return { device: id, endpoint, held, unmap, request };
}

async function ask(dev: VhostUserDevice, message: Record<string, unknown>, timeoutMs = 5000): Promise<unknown> {
  try {
    return await dev.process.request(message, timeoutMs);
  } catch (e) {
    throw generic(`${dev.kind.name} ${dev.spec.id}: ${(e as Error).message}`);
  }
}
