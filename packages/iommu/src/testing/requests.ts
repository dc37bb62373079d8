// virtio-iommu requests as a driver writes them (virtio 1.2 §5.13.6), for the
// device's tests: one encoder per request type, shared by the in-process and
// the process-over-vhost-user tests.
import {
  VIRTIO_IOMMU_MAP_F_READ, VIRTIO_IOMMU_MAP_F_WRITE, VIRTIO_IOMMU_T_ATTACH, VIRTIO_IOMMU_T_MAP, VIRTIO_IOMMU_T_PROBE, VIRTIO_IOMMU_T_UNMAP,
} from '../spec.ts';

export const req = (len: number, fill: (v: DataView) => void): Uint8Array => {
  const b = new Uint8Array(len);
  fill(new DataView(b.buffer));
  return b;
};
export const attachReq = (domain: number, endpoint: number, flags = 0) =>
  req(20, (v) => {
    v.setUint8(0, VIRTIO_IOMMU_T_ATTACH);
    v.setUint32(4, domain, true);
    v.setUint32(8, endpoint, true);
    v.setUint32(12, flags, true);
  });
export const mapReq = (domain: number, vs: number, ve: number, ps: number, flags = VIRTIO_IOMMU_MAP_F_READ | VIRTIO_IOMMU_MAP_F_WRITE) =>
  req(36, (v) => {
    v.setUint8(0, VIRTIO_IOMMU_T_MAP);
    v.setUint32(4, domain, true);
    v.setBigUint64(8, BigInt(vs), true);
    v.setBigUint64(16, BigInt(ve), true);
    v.setBigUint64(24, BigInt(ps), true);
    v.setUint32(32, flags, true);
  });
export const unmapReq = (domain: number, vs: number, ve: number) =>
  req(28, (v) => {
    v.setUint8(0, VIRTIO_IOMMU_T_UNMAP);
    v.setUint32(4, domain, true);
    v.setBigUint64(8, BigInt(vs), true);
    v.setBigUint64(16, BigInt(ve), true);
  });
export const probeReq = (endpoint: number) =>
  req(72, (v) => {
    v.setUint8(0, VIRTIO_IOMMU_T_PROBE);
    v.setUint32(4, endpoint, true);
    v.setUint8(10, 0xff); // reserved: the device MUST ignore it
  });
