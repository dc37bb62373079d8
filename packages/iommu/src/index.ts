// @vmm/iommu: the virtio-iommu device (virtio 1.2 §5.13) and the shared
// I/O translation table device processes read (ARCHITECTURE.md).
export * from './spec.ts';
export { IommuTable, IommuTableView, IommuTableError, tableBytes, DEFAULT_SIZES, READER_SLOTS, FAULT_RING, summarize, type TableSummary, type TableSizes, type Mapping, type RecordedFault } from './table.ts';
export { parseRequest, writeReply, writeStatus, type IommuRequest, type Parsed, type Reply } from './request.ts';
export { execute, type ExecResult, type IommuLimits, type ReservedRegion } from './execute.ts';
export { IommuDevice, type IommuDeviceOptions, type IommuCounters } from './device.ts';
export { EndpointTranslator } from './translator.ts';
export { mapTableFile } from './file.ts';
export { IOMMU_ENDPOINT_OPTIONS, IOMMU_TABLE_OPTION, endpointOptions, openEndpoint, type EndpointOptions } from './endpoint.ts';
