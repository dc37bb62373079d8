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

export class GuestKitError extends Error {
  readonly code: GuestKitErrorCode;
  constructor(code: GuestKitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GuestKitError';
    this.code = code;
  }
}
