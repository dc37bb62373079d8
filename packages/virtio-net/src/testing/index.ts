// Test and benchmark helpers (`@vmm/virtio-net/testing`): frame builders,
// a guest-less virtio-net driver, and DPDK testpmd as a real peer.
export { ipv4ChecksumsOk, rawFrame, tcp4Frame } from './frames.ts';
export { NicDriver, DRIVER_FEATURES } from './nic-driver.ts';
export { haveTestpmd, startTestpmd, parseTestpmdStats, type TestpmdStats, type TestpmdRun } from './testpmd.ts';
