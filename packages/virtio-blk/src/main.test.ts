import { describe, expect, it } from 'vitest';
import { parseBlkArgs } from './main.ts';

describe('vmm-blk argv behind the IOMMU', () => {
  const base = ['--socket', 's', '--file', 'd.img'];
  it('takes the table, endpoint and reader slot together', () => {
    expect(parseBlkArgs([...base])!.iommu).toBeNull();
    expect(parseBlkArgs([...base, '--iommu-table', 't', '--iommu-endpoint', '6', '--iommu-reader', '0'])!.iommu).toEqual({ table: 't', endpoint: 6, reader: 0 });
  });
  it('refuses half of it, naming what is missing', () => {
    expect(() => parseBlkArgs([...base, '--iommu-table', 't'])).toThrow("virtio-blk: iommu-table=t needs iommu-endpoint and iommu-reader");
    expect(() => parseBlkArgs([...base, '--iommu-endpoint', '6'])).toThrow('iommu-endpoint and iommu-reader need iommu-table');
    expect(() => parseBlkArgs([...base, '--iommu-table', 't', '--iommu-endpoint', '6', '--iommu-reader', '16'])).toThrow(/iommu-reader=16: expected an integer from 0 to 15/);
  });
});
