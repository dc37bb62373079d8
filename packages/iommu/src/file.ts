// The table file (on tmpfs) as a device process maps it: read-side view,
// MAP_SHARED, so it sees every change vmm-iommu makes as it makes it.
import { closeSync, fstatSync, openSync } from 'node:fs';
import { mmapShared } from '@vmm/core';
import { IommuTableError, IommuTableView } from './table.ts';

export function mapTableFile(path: string): IommuTableView {
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch (e) {
    throw new IommuTableError(`IOMMU table ${path}: ${(e as Error).message}`);
  }
  try {
    return new IommuTableView(mmapShared(fd, fstatSync(fd).size));
  } finally {
    closeSync(fd);
  }
}
