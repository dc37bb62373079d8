// Typed cross-process messages (crosvm's ProxyDevice style, STYLE.md §8):
// msgpack-encoded objects with a `type` discriminant, length-prefixed on a
// stream socket so they can travel next to SCM_RIGHTS fds (ffi.sendWithFds).
// A receiver checks each decoded value with a type guard before use.

import { Packr } from 'msgpackr';
import { VmmError } from './errors.ts';

export interface TypedMessage {
  type: string;
}

export class MessageError extends VmmError {
  constructor(message: string, code = 'ERR_MESSAGE_INVALID') {
    super(message, 'protocol', code);
  }
}

// Plain maps (no record extension) so any peer's msgpack reads them; bigints stay bigints (feature masks, addresses).
const packr = new Packr({ useRecords: false, int64AsType: 'bigint', useBigIntExtension: true });

/** Largest frame accepted (16 MiB): a bigger length prefix means a corrupt or hostile stream. */
export const MAX_MESSAGE_SIZE = 16 << 20;

export function encodeMessage(m: TypedMessage): Uint8Array {
  return packr.pack(m);
}

export function decodeMessage<T extends TypedMessage>(bytes: Uint8Array, guard: (v: unknown) => v is T): T {
  let v: unknown;
  try {
    v = packr.unpack(bytes);
  } catch (e) {
    throw new MessageError(`undecodable message of ${bytes.length} bytes: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || typeof (v as { type?: unknown }).type !== 'string') throw new MessageError('message without a string `type`');
  if (!guard(v)) throw new MessageError(`unexpected message type ${(v as TypedMessage).type}`);
  return v;
}

/** u32 little-endian length, then the msgpack body. */
export function frameMessage(m: TypedMessage): Uint8Array {
  const body = encodeMessage(m);
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length, true);
  out.set(body, 4);
  return out;
}

/** Reassembles frames from stream chunks; push() returns the complete bodies. */
export class MessageDeframer {
  private buf = new Uint8Array(0);

  push(chunk: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    const out: Uint8Array[] = [];
    let o = 0;
    while (joined.length - o >= 4) {
      const len = new DataView(joined.buffer, o, 4).getUint32(0, true);
      if (len > MAX_MESSAGE_SIZE) throw new MessageError(`frame of ${len} bytes exceeds ${MAX_MESSAGE_SIZE}`, 'ERR_MESSAGE_SIZE');
      if (joined.length - o - 4 < len) break;
      out.push(joined.slice(o + 4, o + 4 + len));
      o += 4 + len;
    }
    this.buf = joined.slice(o);
    return out;
  }
}
