// QMP's input: a stream of JSON values, parsed the way QEMU's monitor
// parses it (qobject/json-lexer.c, json-streamer.c, json-parser.c; the
// framing rules are in docs/interop/qmp-spec.rst, "Protocol Specification").
//
// - A value is complete when the bracket that opened it is closed (a
//   scalar at the top level is complete at once): no newline is needed,
//   values may span lines and several may share one. Clients such as
//   QEMU's own Python library send `{"execute": …}` with no line ending.
// - Bytes, not characters: strings are validated as (modified) UTF-8 by the
//   parser, escapes are decoded by it; QEMU's extensions are accepted too
//   (single-quoted strings, `\'`).
// - Garbage gets QEMU's answers ("JSON parse error, stray '@'", "…, invalid
//   keyword 'hello'", "…, expecting value", "…, duplicate key", …), and
//   after a lexical error the input is skipped up to the next structural
//   character ({ } [ ] : ,) or ASCII control character (a newline, say), so a
//   client can always get the parser back in step.
// - Limits per value: its bytes (`maxValueBytes`) and its nesting depth,
//   with QEMU's messages. Over the size limit QEMU hands the partial token
//   on; here the value is dropped and the lexer skips to the next
//   resynchronisation point, so nothing over the limit is ever buffered.
//   (QEMU's token-count limit is implied: every token is at least a byte.)
//
// General-purpose streaming parsers (jsonparse, @streamparser/json,
// stream-json) stop at the first error and word their errors their own way,
// so this follows QEMU's lexer and streamer directly.

/** A parsed JSON value. Objects have no prototype tricks: `__proto__` is an ordinary key. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** One result of the stream, in input order: a complete value, or the error QEMU would report. */
export type JsonStreamItem = { value: JsonValue } | { error: string };

export interface JsonStreamLimits {
  /** Bytes of one value, all its tokens together (QEMU: 64 MiB). */
  maxValueBytes: number;
  /** Open brackets and braces at once (QEMU: 1024). */
  maxNesting: number;
}

/** QEMU's MAX_NESTING (qobject/json-streamer.c). */
const QEMU_MAX_NESTING = 1024;

const Tok = {
  LCurly: 0,
  RCurly: 1,
  LSquare: 2,
  RSquare: 3,
  Colon: 4,
  Comma: 5,
  Integer: 6,
  Float: 7,
  Keyword: 8,
  String: 9,
} as const;
type Tok = (typeof Tok)[keyof typeof Tok];

// Lexer states (json-lexer.c's, by the same names).
const S = {
  Start: 0,
  Recovery: 1,
  DqString: 2,
  DqEscape: 3,
  SqString: 4,
  SqEscape: 5,
  Zero: 6,
  Sign: 7,
  Digits: 8,
  Mantissa: 9,
  MantissaDigits: 10,
  ExpE: 11,
  ExpSign: 12,
  ExpDigits: 13,
  Keyword: 14,
} as const;
type S = (typeof S)[keyof typeof S];

/** What one byte does in one state. */
type Step =
  | { kind: 'state'; state: S } // consumed; go on in `state`
  | { kind: 'skip' } // consumed, no token (whitespace; a skipped byte in recovery)
  | { kind: 'token'; tok: Tok; lookahead: boolean } // a token ends (at this byte, or before it)
  | { kind: 'error' } // consumed; the token so far plus this byte is a lexical error
  | { kind: 'resync' }; // recovery ends before this byte

const STATES = new Map<S, Step>();
const STATE = (state: S): Step => {
  let st = STATES.get(state);
  if (!st) STATES.set(state, (st = { kind: 'state', state }));
  return st;
};
const SKIP: Step = { kind: 'skip' };
const ERROR: Step = { kind: 'error' };
const RESYNC: Step = { kind: 'resync' };
const TOKENS = Object.values(Tok);
const ENDS_BEFORE = TOKENS.map((tok): Step => ({ kind: 'token', tok, lookahead: true }));
const ENDS_AT = TOKENS.map((tok): Step => ({ kind: 'token', tok, lookahead: false }));
/** The token ends before this byte (which starts the next one). */
const ends = (tok: Tok): Step => ENDS_BEFORE[tok]!;
/** The token ends with this byte. */
const is = (tok: Tok): Step => ENDS_AT[tok]!;
const STRUCTURAL: Record<number, Tok> = { 0x7b: Tok.LCurly, 0x7d: Tok.RCurly, 0x5b: Tok.LSquare, 0x5d: Tok.RSquare, 0x3a: Tok.Colon, 0x2c: Tok.Comma };
const TOKEN_STEP: Record<number, Step> = Object.fromEntries(Object.entries(STRUCTURAL).map(([b, t]) => [b, is(t)]));

const isDigit = (b: number): boolean => b >= 0x30 && b <= 0x39;
const isLower = (b: number): boolean => b >= 0x61 && b <= 0x7a;
/** Bytes allowed inside a string by the lexer: no ASCII control characters, not 0xFE/0xFF (never in UTF-8). */
const inString = (b: number): boolean => b >= 0x20 && b <= 0xfd;

function step(state: S, b: number): Step {
  switch (state) {
    case S.Start: {
      const t = TOKEN_STEP[b];
      if (t) return t;
      if (b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0a) return SKIP;
      if (b === 0x22) return STATE(S.DqString);
      if (b === 0x27) return STATE(S.SqString);
      if (b === 0x30) return STATE(S.Zero);
      if (b >= 0x31 && b <= 0x39) return STATE(S.Digits);
      if (b === 0x2d) return STATE(S.Sign);
      if (isLower(b)) return STATE(S.Keyword);
      return ERROR;
    }
    case S.Recovery:
      // Resynchronise at a structural character, an ASCII control character other than tab, or 0xFE/0xFF.
      if (b in STRUCTURAL || (b < 0x20 && b !== 0x09) || b >= 0xfe) return RESYNC;
      return SKIP;
    case S.DqString:
      if (b === 0x22) return is(Tok.String);
      if (b === 0x5c) return STATE(S.DqEscape);
      return inString(b) ? STATE(S.DqString) : ERROR;
    case S.SqString:
      if (b === 0x27) return is(Tok.String);
      if (b === 0x5c) return STATE(S.SqEscape);
      return inString(b) ? STATE(S.SqString) : ERROR;
    // Any printable byte after a backslash; the parser rejects the invalid escapes.
    case S.DqEscape:
      return inString(b) ? STATE(S.DqString) : ERROR;
    case S.SqEscape:
      return inString(b) ? STATE(S.SqString) : ERROR;
    case S.Zero:
      if (isDigit(b)) return ERROR;
      if (b === 0x2e) return STATE(S.Mantissa);
      return ends(Tok.Integer);
    case S.Sign:
      if (b === 0x30) return STATE(S.Zero);
      if (b >= 0x31 && b <= 0x39) return STATE(S.Digits);
      return ERROR;
    case S.Digits:
      if (isDigit(b)) return STATE(S.Digits);
      if (b === 0x65 || b === 0x45) return STATE(S.ExpE);
      if (b === 0x2e) return STATE(S.Mantissa);
      return ends(Tok.Integer);
    case S.Mantissa:
      return isDigit(b) ? STATE(S.MantissaDigits) : ERROR;
    case S.MantissaDigits:
      if (isDigit(b)) return STATE(S.MantissaDigits);
      if (b === 0x65 || b === 0x45) return STATE(S.ExpE);
      return ends(Tok.Float);
    case S.ExpE:
      if (b === 0x2b || b === 0x2d) return STATE(S.ExpSign);
      return isDigit(b) ? STATE(S.ExpDigits) : ERROR;
    case S.ExpSign:
      return isDigit(b) ? STATE(S.ExpDigits) : ERROR;
    case S.ExpDigits:
      return isDigit(b) ? STATE(S.ExpDigits) : ends(Tok.Float);
    case S.Keyword:
      return isLower(b) ? STATE(S.Keyword) : ends(Tok.Keyword);
  }
}

interface Token {
  tok: Tok;
  bytes: Uint8Array;
}

const latin = new TextDecoder('latin1');
/** A token's text for an error message: as QEMU prints it (a C string: it ends at a NUL byte; bad UTF-8 shows as U+FFFD). */
function shown(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul >= 0 ? bytes.subarray(0, nul) : bytes);
}

/**
 * Push bytes in with feed(); each complete value or error comes out through
 * `emit`, synchronously and in order. flush() ends the input (the end of a
 * WebSocket message): a value still open is parsed as it stands.
 */
export class JsonStream {
  private readonly emit: (item: JsonStreamItem) => void;
  private readonly limits: JsonStreamLimits;
  private state: S = S.Start;
  /** The current token's bytes from earlier chunks. */
  private carry: Uint8Array[] = [];
  private carryBytes = 0;
  // The streamer: the tokens of the value being read.
  private tokens: Token[] = [];
  private valueBytes = 0;
  private braces = 0;
  private brackets = 0;

  constructor(emit: (item: JsonStreamItem) => void, limits: Partial<JsonStreamLimits> = {}) {
    this.emit = emit;
    this.limits = { maxValueBytes: limits.maxValueBytes ?? 64 << 20, maxNesting: limits.maxNesting ?? QEMU_MAX_NESTING };
  }

  feed(chunk: Uint8Array): void {
    let start = 0; // where the current token's bytes begin in this chunk
    for (let i = 0; i < chunk.length; i++) {
      if (this.state === S.DqString || this.state === S.SqString) {
        // Fast path through the plain bytes of a string (most of a large value).
        const quote = this.state === S.DqString ? 0x22 : 0x27;
        // Up to the last byte within the size limit; the byte loop below enforces the limit on the next one.
        const stop = Math.min(chunk.length, this.limits.maxValueBytes - this.valueBytes - this.carryBytes + start);
        let j = i;
        while (j < stop) {
          const c = chunk[j]!;
          if (c === quote || c === 0x5c || !inString(c)) break;
          j++;
        }
        i = j;
        if (i === chunk.length) break;
      }
      const b = chunk[i]!;
      for (;;) {
        const st = step(this.state, b);
        if (st.kind === 'state') {
          this.state = st.state;
          if (this.carryBytes + i + 1 - start + this.valueBytes > this.limits.maxValueBytes) {
            // Too long a token: drop the value, skip the rest of this token.
            this.fail('JSON token size limit exceeded');
            this.clearToken();
            this.state = S.Recovery;
            start = i + 1;
          }
          break;
        }
        if (st.kind === 'skip') {
          start = i + 1;
          break;
        }
        if (st.kind === 'resync') {
          this.state = S.Start;
          start = i;
          continue; // the byte starts over in Start
        }
        if (st.kind === 'error') {
          const bytes = this.takeToken(chunk, start, i + 1);
          this.state = S.Recovery;
          this.fail(`JSON parse error, stray '${shown(bytes)}'`);
          start = i + 1;
          break;
        }
        const end = st.lookahead ? i : i + 1;
        const bytes = this.takeToken(chunk, start, end);
        this.state = S.Start;
        this.token(st.tok, bytes);
        start = end;
        if (!st.lookahead) break;
      }
    }
    if (this.state !== S.Start && this.state !== S.Recovery && start < chunk.length) {
      const rest = chunk.slice(start);
      this.carry.push(rest);
      this.carryBytes += rest.length;
    }
  }

  /** End of input (QEMU's json_message_parser_flush): end the token being read, then parse what the value has. */
  flush(): void {
    // As if one more byte came that is never consumed: it ends a number or
    // keyword, and makes an unterminated string a lexical error.
    if (this.state !== S.Start && this.state !== S.Recovery) {
      const st = step(this.state, 0);
      const bytes = this.takeToken(new Uint8Array(0), 0, 0);
      if (st.kind === 'token') this.token(st.tok, bytes);
      else this.fail(`JSON parse error, stray '${shown(bytes)}'`);
    }
    this.state = S.Start;
    this.clearToken();
    if (this.tokens.length > 0) this.parseValue();
  }

  private takeToken(chunk: Uint8Array, start: number, end: number): Uint8Array {
    const here = chunk.subarray(start, end);
    if (this.carry.length === 0) return here;
    const out = new Uint8Array(this.carryBytes + here.length);
    let o = 0;
    for (const c of this.carry) {
      out.set(c, o);
      o += c.length;
    }
    out.set(here, o);
    this.clearToken();
    return out;
  }

  private clearToken(): void {
    this.carry = [];
    this.carryBytes = 0;
  }

  /** json_message_process_token: count brackets, apply the limits, parse once the value is closed. */
  private token(tok: Tok, bytes: Uint8Array): void {
    if (tok === Tok.LCurly) this.braces++;
    else if (tok === Tok.RCurly) this.braces--;
    else if (tok === Tok.LSquare) this.brackets++;
    else if (tok === Tok.RSquare) this.brackets--;
    if (this.valueBytes + bytes.length + 1 > this.limits.maxValueBytes) return this.fail('JSON token size limit exceeded');
    if (this.braces + this.brackets > this.limits.maxNesting) return this.fail('JSON nesting depth limit exceeded');
    this.tokens.push({ tok, bytes });
    this.valueBytes += bytes.length;
    if ((this.braces > 0 || this.brackets > 0) && this.braces >= 0 && this.brackets >= 0) return;
    this.parseValue();
  }

  private parseValue(): void {
    const tokens = this.tokens;
    this.reset();
    let item: JsonStreamItem;
    try {
      item = { value: new Parser(tokens).parse() };
    } catch (e) {
      if (!(e instanceof JsonParseError)) throw e;
      item = { error: `JSON parse error, ${e.message}` };
    }
    this.emit(item);
  }

  private fail(error: string): void {
    this.reset();
    this.emit({ error });
  }

  private reset(): void {
    this.tokens = [];
    this.valueBytes = 0;
    this.braces = 0;
    this.brackets = 0;
  }
}

class JsonParseError extends Error {}

/** json-parser.c: recursive descent over one value's tokens; the first error wins. */
class Parser {
  private readonly tokens: Token[];
  private pos = 0;

  constructor(tokens: Token[]) {
    this.tokens = tokens;
  }

  parse(): JsonValue {
    return this.value();
  }

  private peek(): Token {
    const t = this.tokens[this.pos];
    if (!t) throw new JsonParseError('premature EOI');
    return t;
  }

  private next(): Token {
    const t = this.peek();
    this.pos++;
    return t;
  }

  private value(): JsonValue {
    const t = this.peek();
    switch (t.tok) {
      case Tok.LCurly: return this.object();
      case Tok.LSquare: return this.array();
      case Tok.String: this.pos++; return parseString(t.bytes);
      case Tok.Integer:
      case Tok.Float: this.pos++; return Number(latin.decode(t.bytes));
      case Tok.Keyword: {
        this.pos++;
        const k = latin.decode(t.bytes);
        if (k === 'true') return true;
        if (k === 'false') return false;
        if (k === 'null') return null;
        throw new JsonParseError(`invalid keyword '${k}'`);
      }
      default: throw new JsonParseError('expecting value');
    }
  }

  private object(): JsonValue {
    this.next();
    const obj: { [key: string]: JsonValue } = {};
    if (this.peek().tok === Tok.RCurly) {
      this.pos++;
      return obj;
    }
    for (;;) {
      const key = this.value();
      if (typeof key !== 'string') throw new JsonParseError('key is not a string in object');
      if (this.next().tok !== Tok.Colon) throw new JsonParseError('missing : in object pair');
      const v = this.value();
      if (Object.hasOwn(obj, key)) throw new JsonParseError('duplicate key');
      // defineProperty: a key "__proto__" is data, not the object's prototype.
      Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true });
      const sep = this.next().tok;
      if (sep === Tok.RCurly) return obj;
      if (sep !== Tok.Comma) throw new JsonParseError('expected separator in dict');
    }
  }

  private array(): JsonValue {
    this.next();
    const list: JsonValue[] = [];
    if (this.peek().tok === Tok.RSquare) {
      this.pos++;
      return list;
    }
    for (;;) {
      list.push(this.value());
      const sep = this.next().tok;
      if (sep === Tok.RSquare) return list;
      if (sep !== Tok.Comma) throw new JsonParseError('expected separator in list');
    }
  }
}

const SIMPLE_ESCAPES: Record<number, string> = { 0x22: '"', 0x27: "'", 0x5c: '\\', 0x2f: '/', 0x62: '\b', 0x66: '\f', 0x6e: '\n', 0x72: '\r', 0x74: '\t' };

/** Four hex digits at `at`, or -1 (the token may end first). */
function hex4(b: Uint8Array, at: number): number {
  let v = 0;
  for (let i = at; i < at + 4; i++) {
    const c = b[i];
    if (c === undefined) return -1;
    const d = c >= 0x30 && c <= 0x39 ? c - 0x30 : c >= 0x61 && c <= 0x66 ? c - 0x57 : c >= 0x41 && c <= 0x46 ? c - 0x37 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/**
 * One code point of modified UTF-8 at `at` (QEMU's mod_utf8_codepoint):
 * [code point, length], or null for an invalid sequence (overlong forms
 * other than C0 80 for NUL, surrogates, beyond U+10FFFF, truncated).
 */
function utf8At(b: Uint8Array, at: number): [number, number] | null {
  const c0 = b[at]!;
  if (c0 < 0x80) return [c0, 1];
  const cont = (i: number): number => {
    const c = b[at + i];
    return c !== undefined && (c & 0xc0) === 0x80 ? c & 0x3f : -1;
  };
  if (c0 === 0xc0 && b[at + 1] === 0x80) return [0, 2];
  if (c0 >= 0xc2 && c0 <= 0xdf) {
    const c1 = cont(1);
    return c1 < 0 ? null : [((c0 & 0x1f) << 6) | c1, 2];
  }
  if (c0 >= 0xe0 && c0 <= 0xef) {
    const c1 = cont(1);
    const c2 = cont(2);
    if (c1 < 0 || c2 < 0) return null;
    const cp = ((c0 & 0x0f) << 12) | (c1 << 6) | c2;
    return cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff) ? null : [cp, 3];
  }
  if (c0 >= 0xf0 && c0 <= 0xf4) {
    const c1 = cont(1);
    const c2 = cont(2);
    const c3 = cont(3);
    if (c1 < 0 || c2 < 0 || c3 < 0) return null;
    const cp = ((c0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3;
    return cp < 0x10000 || cp > 0x10ffff ? null : [cp, 4];
  }
  return null;
}

/** A string token (quotes included) to its value (json-parser.c parse_string). */
function parseString(b: Uint8Array): string {
  const quote = b[0]!;
  let out = '';
  let i = 1;
  while (b[i] !== quote) {
    if (b[i] === 0x5c) {
      const beg = i;
      const e = b[i + 1]!;
      i += 2;
      const simple = SIMPLE_ESCAPES[e];
      if (simple !== undefined) {
        out += simple;
        continue;
      }
      if (e !== 0x75) throw new JsonParseError('invalid escape sequence in string');
      let cp = hex4(b, i);
      i += 4;
      if (cp >= 0xd800 && cp <= 0xdbff && b[i] === 0x5c && b[i + 1] === 0x75) {
        // A leading surrogate and another \u: a pair, or nothing valid.
        const trail = hex4(b, i + 2);
        if (trail >= 0xdc00 && trail <= 0xdfff) {
          cp = 0x10000 + ((cp & 0x3ff) << 10) + (trail & 0x3ff);
          i += 6;
        } else cp = -1;
      }
      if (cp < 0 || (cp >= 0xd800 && cp <= 0xdfff)) throw new JsonParseError(`${shown(b.subarray(beg, i))} is not a valid Unicode character`);
      out += String.fromCodePoint(cp);
      continue;
    }
    const u = utf8At(b, i);
    if (u === null) throw new JsonParseError('invalid UTF-8 sequence in string');
    out += String.fromCodePoint(u[0]);
    i += u[1];
  }
  return out;
}
