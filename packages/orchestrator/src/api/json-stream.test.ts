// The QMP input framer and parser. Every expected error below is what
// qemu-system-riscv64 7.2 (Debian 1:7.2+dfsg-7+deb12u18) answered for the same
// bytes on its QMP socket; test/qmp.test.ts replays a set of them against a
// live QEMU and vmm side by side.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { JsonStream, type JsonStreamItem, type JsonStreamLimits } from './json-stream.ts';

const enc = new TextEncoder();

function run(input: string | Uint8Array, opts: { split?: number[]; flush?: boolean; limits?: Partial<JsonStreamLimits> } = {}): JsonStreamItem[] {
  const out: JsonStreamItem[] = [];
  const s = new JsonStream((i) => out.push(i), opts.limits);
  const bytes = typeof input === 'string' ? enc.encode(input) : input;
  let at = 0;
  for (const cut of [...(opts.split ?? []), bytes.length]) {
    s.feed(bytes.subarray(at, cut));
    at = cut;
  }
  if (opts.flush) s.flush();
  return out;
}

const v = (value: unknown): JsonStreamItem => ({ value: value as never });
const e = (error: string): JsonStreamItem => ({ error: `JSON parse error, ${error}` });

describe('framing: a value is complete at its closing bracket', () => {
  it('needs no newline; values may share a line or span lines', () => {
    expect(run('{"execute":"qmp_capabilities"}')).toEqual([v({ execute: 'qmp_capabilities' })]);
    expect(run('{"a":1}{"b":[2,{"c":null}]} {"d":true}\r\n')).toEqual([v({ a: 1 }), v({ b: [2, { c: null }] }), v({ d: true })]);
    expect(run('{"execute":\n "query-name",\n "id":\n 7}')).toEqual([v({ execute: 'query-name', id: 7 })]);
    // An incomplete value waits for the rest.
    expect(run('{"execute":"query-status","id":1')).toEqual([]);
    expect(run('{"execute":"query-status","id":1', { split: [5, 17] }).length).toBe(0);
  });
  it('ends a top-level scalar at the next byte that cannot continue it', () => {
    expect(run('42 "s" true null -0 1e5 1.5 ')).toEqual([v(42), v('s'), v(true), v(null), v(-0), v(1e5), v(1.5)]);
    expect(run('42')).toEqual([]); // 42 could go on: 421
    expect(run('42', { flush: true })).toEqual([v(42)]);
    // 0x10 is 0, the keyword x, 10 (QEMU: three answers).
    expect(run('0x10\n')).toEqual([v(0), e("invalid keyword 'x'"), v(10)]);
  });
  it('braces and quotes inside strings do not count', () => {
    expect(run('{"id":"a\\"}b","x":"{[\'"}')).toEqual([v({ id: 'a"}b', x: "{['" })]);
    expect(run("{'execute':'query-name','id':'q\"'}")).toEqual([v({ execute: 'query-name', id: 'q"' })]);
  });
  it('gives the same values however the bytes are split into chunks', () => {
    const text = '{"execute":"query-name","id":"\\u00e9\\ud83d\\ude00 é😀"} [1, 2.5e-3, {"k": [true, false, null]}] -12 "x\\ty" {"a":@} hello\n';
    const whole = run(text);
    expect(whole.length).toBe(7);
    const bytes = enc.encode(text);
    fc.assert(fc.property(fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 12 }), (cuts) => {
      expect(run(bytes, { split: [...cuts].sort((a, b) => a - b) })).toEqual(whole);
    }));
  });
});

describe("values, as QEMU's parser reads them", () => {
  it('decodes escapes, surrogate pairs, UTF-8 and modified UTF-8 NUL', () => {
    expect(run('"\\/\\b\\f\\n\\r\\t\\u0041\\"\\\'\\\\"')).toEqual([v('/\b\f\n\r\tA"\'\\')]);
    expect(run('"\\u00e9\\ud83d\\ude00"')).toEqual([v('é😀')]);
    expect(run(new Uint8Array([0x22, 0xc3, 0xa9, 0xf0, 0x9f, 0x98, 0x80, 0x22]))).toEqual([v('é😀')]);
    expect(run('"\\u0000"')).toEqual([v('\0')]);
    expect(run(new Uint8Array([0x22, 0xc0, 0x80, 0x22]))).toEqual([v('\0')]);
    expect(run('"\x7f"')).toEqual([v('\x7f')]);
  });
  it('reads numbers as QEMU does (int64, uint64, then double)', () => {
    // Integers beyond 2^53 become the nearest double (JavaScript numbers), as a QEMU double would.
    expect(run('[9223372036854775807, 18446744073709551615, -9223372036854775809, 1.0, 1E2, -0.5e3]')).toEqual([
      v([2 ** 63, 2 ** 64, -(2 ** 63), 1, 100, -500]),
    ]);
  });
  it('keeps "__proto__" an ordinary key', () => {
    const [item] = run('{"__proto__":{"polluted":1},"a":2}');
    const obj = (item as { value: Record<string, unknown> }).value;
    expect(Object.keys(obj)).toEqual(['__proto__', 'a']);
    expect(Object.getPrototypeOf(obj)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("garbage gets QEMU's answers", () => {
  const cases: [string, JsonStreamItem[]][] = [
    ['{"a" 1}', [e('missing : in object pair')]],
    ['{"a":1 "b":2}', [e('expected separator in dict')]],
    ['[1 2]', [e('expected separator in list')]],
    ['{1:2}', [e('key is not a string in object')]],
    ['{"a":1,}', [e('expecting value')]],
    ['{"a":}', [e('expecting value')]],
    ['{,}', [e('expecting value')]],
    ['[1,]', [e('expecting value')]],
    ['{"a":1,"a":2}', [e('duplicate key')]],
    ['}', [e('expecting value')]],
    [']', [e('expecting value')]],
    ['{"execute":"query-name"}}', [v({ execute: 'query-name' }), e('expecting value')]],
    ['hello\n', [e("invalid keyword 'hello'")]],
    ['nul\n', [e("invalid keyword 'nul'")]],
    ['tru e\n', [e("invalid keyword 'tru'"), e("invalid keyword 'e'")]],
    ['{not json\n}', [e("invalid keyword 'not'")]],
    ['{"a": @}', [e("stray '@'"), e('expecting value')]],
    ['%d', [e("stray '%'")]],
    ['.5\n', [e("stray '.'")]],
    ['01 ', [e("stray '01'")]],
    ['1.5e \n', [e("stray '1.5e '")]],
    ['-\n', [e("stray '-\n'")]],
    ['1.\n', [e("stray '1.\n'")]],
    ['"\\u00"\n', [e('\\u00" is not a valid Unicode character')]],
    ['"\\ud800"\n', [e('\\ud800 is not a valid Unicode character')]],
    ['"\\udc00"\n', [e('\\udc00 is not a valid Unicode character')]],
    ['"\\ud800\\u0041"\n', [e('\\ud800 is not a valid Unicode character')]],
    ['"\\x"\n', [e('invalid escape sequence in string')]],
    ['"unterminated\n', [e("stray '\"unterminated\n'")]],
    // A control character inside a string is an error; recovery then skips to the next '}'.
    ['{"execute":"query-name","id":"a\tb"}', [e("stray '\"a\t'"), e('expecting value')]],
    // NUL and 0xFF force the parser back into step (qmp-spec.rst); QEMU prints the NUL's token as an empty C string.
    ['{"execute":"query-name"}\0{"execute":"query-name","id":2}', [v({ execute: 'query-name' }), e("stray ''"), v({ execute: 'query-name', id: 2 })]],
  ];
  for (const [input, want] of cases) {
    it(JSON.stringify(input), () => {
      expect(run(input)).toEqual(want);
    });
  }
  it('rejects bytes that are not UTF-8 (0xFF in the lexer, the rest in the parser)', () => {
    expect(run(new Uint8Array([0x22, 0xff, 0x22, 0x0a]))).toEqual([e("stray '\"\uFFFD'")]);
    for (const bad of [[0xc3, 0x28], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe0, 0x80, 0x80]]) {
      expect(run(new Uint8Array([0x22, ...bad, 0x22, 0x0a]))).toEqual([e('invalid UTF-8 sequence in string')]);
    }
  });
  it('after a lexical error skips to a structural or control character, then parses again', () => {
    // Recovery swallows "-0" after "1." up to the next newline, as QEMU does.
    expect(run('1.\n-0\n.5\n{"execute":"query-name","id":2}')).toEqual([e("stray '1.\n'"), e("stray '.'"), v({ execute: 'query-name', id: 2 })]);
    expect(run('01 1.5e "x" nul {"a":1}')).toEqual([e("stray '01'"), v({ a: 1 })]);
  });
});

describe('limits per value', () => {
  it('nesting deeper than 1024 is refused, and the stream goes on', () => {
    expect(run('['.repeat(1024) + ']'.repeat(1024))).toEqual([v(JSON.parse('['.repeat(1024) + ']'.repeat(1024)))]);
    const deep = run('['.repeat(1025) + ']'.repeat(2) + '{"a":1}');
    expect(deep).toEqual([{ error: 'JSON nesting depth limit exceeded' }, e('expecting value'), e('expecting value'), v({ a: 1 })]);
  });
  it('a value over the size limit is refused without buffering it, and the stream goes on', () => {
    const limits = { maxValueBytes: 64 };
    expect(run(`{"a":"${'x'.repeat(40)}"}`, { limits })).toEqual([v({ a: 'x'.repeat(40) })]);
    // Many small tokens: refused at the token that crosses the limit; the rest is answered as QEMU would.
    const many = run(`[${'1,'.repeat(40)}1]`, { limits });
    expect(many[0]).toEqual({ error: 'JSON token size limit exceeded' });
    // One huge token, fed in small chunks: refused once, skipped to the next structural character.
    const huge = `{"a":"${'y'.repeat(10_000)}"}{"b":2}`;
    const splits = Array.from({ length: 100 }, (_, i) => (i + 1) * 100);
    expect(run(huge, { limits, split: splits })).toEqual([{ error: 'JSON token size limit exceeded' }, e('expecting value'), v({ b: 2 })]);
  });
});

describe('end of input (a WebSocket message)', () => {
  it('ends the last token and parses what is open', () => {
    expect(run('{"a":1', { flush: true })).toEqual([e('premature EOI')]);
    expect(run('"abc', { flush: true })).toEqual([e("stray '\"abc'")]);
    expect(run('tru', { flush: true })).toEqual([e("invalid keyword 'tru'")]);
    expect(run('{"a":1}  ', { flush: true })).toEqual([v({ a: 1 })]);
    expect(run('', { flush: true })).toEqual([]);
  });
});
