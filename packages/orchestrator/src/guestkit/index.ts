export { CpioWriter, writeCpio, type CpioEntry } from './cpio.ts';
export { GuestKitError, type GuestKitErrorCode } from './errors.ts';
export { stderrReporter, silentReporter, type Reporter } from './download.ts';
export {
  ensureGuestKit,
  guestCacheDir,
  checkKernelImage,
  readLock,
  DEFAULT_LOCK_PATH,
  type GuestKit,
  type GuestLock,
  type LockedPackage,
  type EnsureOptions,
} from './kit.ts';
export {
  buildInitramfs,
  buildExecArchive,
  initrdWithExec,
  execMarkers,
  ExecOutputFilter,
  GUEST_MODULES,
  INIT_SCRIPT,
  FINISHER_ADDR,
  type BuiltInitramfs,
  type ExecArchive,
} from './initramfs.ts';
export { ensureGuestPackages, guestPackagesArchive, resolveClosure } from './packages.ts';
export { buildPackagesImage, PACKAGES_LABEL, PACKAGES_MOUNT, type PackagesImage } from './image.ts';
