import { VmmError } from '@vmm/core';

/**
 * Typed errors of the guest kit. `code` is stable (scripts and tests match
 * on it); the message names the value that was wrong and what to do.
 */
export type GuestKitErrorCode =
  | 'ERR_GUEST_NO_MIRROR'
  | 'ERR_GUEST_DOWNLOAD'
  | 'ERR_GUEST_HASH'
  | 'ERR_GUEST_SIGNATURE'
  | 'ERR_GUEST_INDEX'
  | 'ERR_GUEST_RESOLVE'
  | 'ERR_GUEST_LOCK'
  | 'ERR_GUEST_EXTRACT'
  | 'ERR_GUEST_TOOL'
  | 'ERR_GUEST_CPIO'
  | 'ERR_GUEST_KERNEL';

/** Network failures are transient (retry later); everything else is a configuration problem to fix. */
export class GuestKitError extends VmmError {
  declare readonly code: GuestKitErrorCode;
  constructor(code: GuestKitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, code === 'ERR_GUEST_DOWNLOAD' ? 'transient' : 'config', code, options);
  }
}
