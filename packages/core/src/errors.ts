// Typed errors shared by every package (STYLE.md §7). Each error has a stable
// `code` callers can switch on and a `kind` telling what to do about it:
//  - 'guest':     the guest did something invalid; report it to the guest
//                 (an I/O error status, NEEDS_RESET), never crash the VMM.
//  - 'config':    the operator's configuration is wrong; refuse to start and say why.
//  - 'transient': an OS or peer failure (a socket closed, a process died);
//                 retry or reconnect.
//  - 'protocol':  a peer sent a malformed message; drop that connection.

export type ErrorKind = 'guest' | 'config' | 'transient' | 'protocol';

export class VmmError extends Error {
  readonly code: string;
  readonly kind: ErrorKind;
  constructor(message: string, kind: ErrorKind, code = 'ERR_VMM', options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.kind = kind;
    this.code = code;
  }
}

/** A configuration value is invalid (bad path, size, option). */
export class ConfigError extends VmmError {
  constructor(message: string, code = 'ERR_CONFIG') {
    super(message, 'config', code);
  }
}

/** True if `e` is a VmmError with the given code. */
export function isVmmError(e: unknown, code?: string): e is VmmError {
  return e instanceof VmmError && (code === undefined || e.code === code);
}
