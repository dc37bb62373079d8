// `pnpm bench NAME [args]` runs bench/NAME.ts; `pnpm bench` (or --help) lists
// the benchmarks with their synopses; `pnpm bench NAME --help` shows one's
// header. Each file's first line is its synopsis, `pnpm bench NAME [--flag V]…`:
// the runner refuses, in one line, a flag the synopsis does not name.
// A benchmark either exports `main(args: string[]): Promise<void> | void`
// (imported and called here) or is a plain script (run as a child process
// with the same Node and args); see bench/README.md. It prints its figures
// and, last, one JSON line `{"bench":NAME,...,"ratio":R}` against a
// reference measured in the same run.

import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));

export class BenchNotFoundError extends Error {
  readonly code = 'ERR_BENCH_NOT_FOUND';
  constructor(name: string, known: string[]) {
    super(`no benchmark "${name}" (known: ${known.join(', ')})`);
  }
}

/** Benchmark names: every bench/*.ts except the runner, helpers and tests. */
export function listBenches(dir = here): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts') && f !== 'run.ts' && !f.startsWith('_'))
    .map((f) => f.slice(0, -3))
    .sort();
}

class BenchUsageError extends Error {
  readonly code = 'ERR_BENCH_USAGE';
}

/** The header comment of bench/NAME.ts, its first line the synopsis. */
function header(file: string): string[] {
  const lines: string[] = [];
  for (const l of readFileSync(file, 'utf8').split('\n')) {
    if (!l.startsWith('//')) break;
    lines.push(l.replace(/^\/\/ ?/, ''));
  }
  return lines;
}

/** `pnpm bench NAME [--runs K] [--quick]` → the flags and whether each takes a value. */
function synopsisFlags(synopsis: string): Map<string, boolean> {
  const flags = new Map<string, boolean>();
  for (const m of synopsis.matchAll(/\[--([a-z][a-z0-9-]*)( [^\]]+)?\]/g)) flags.set(m[1]!, m[2] !== undefined);
  return flags;
}

function synopsis(file: string): string {
  const first = header(file)[0] ?? '';
  return /`([^`]+)`/.exec(first)?.[1] ?? first;
}

/** Refuse an argument the synopsis does not allow, naming it and what is allowed. */
function checkBenchArgs(name: string, syn: string, args: string[]): void {
  const flags = synopsisFlags(syn);
  const allowed = [...flags].map(([f, v]) => (v ? `--${f} V` : `--${f}`)).join(', ') || 'no options';
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--help' || a === '-h') continue;
    const m = /^--([^=]+)(=.*)?$/.exec(a);
    if (!m) throw new BenchUsageError(`bench ${name}: unexpected argument ${JSON.stringify(a)} (${name} takes ${allowed})`);
    const takesValue = flags.get(m[1]!);
    if (takesValue === undefined) throw new BenchUsageError(`bench ${name}: unknown option --${m[1]} (${name} takes ${allowed})`);
    if (takesValue && m[2] === undefined) {
      if (i + 1 >= args.length) throw new BenchUsageError(`bench ${name}: --${m[1]} needs a value`);
      i++;
    }
  }
}

function benchUsage(dir = here): string {
  const rows = listBenches(dir).map((n) => `  ${synopsis(path.join(dir, `${n}.ts`))}`);
  return `usage: pnpm bench NAME [options]   (pnpm bench NAME --help: what it measures)

${rows.join('\n')}

Each prints its figures and, last, one JSON line with its ratio against a
reference measured in the same run (bench/README.md).
`;
}

export async function runBench(name: string, args: string[], dir = here): Promise<void> {
  const known = listBenches(dir);
  if (!known.includes(name)) throw new BenchNotFoundError(name, known);
  const file = path.join(dir, `${name}.ts`);
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(`${header(file).join('\n')}\n`);
    return;
  }
  checkBenchArgs(name, synopsis(file), args);
  // Decide before importing: importing a plain script would run its top level here.
  if (!/export\s+(async\s+)?function\s+main\b|export\s*\{[^}]*\bmain\b/.test(readFileSync(file, 'utf8'))) {
    const r = spawnSync(process.execPath, [file, ...args], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`bench/${name}.ts exited with ${r.status ?? r.signal}`);
    return;
  }
  const mod = (await import(pathToFileURL(file).href)) as { main?: (a: string[]) => unknown };
  if (typeof mod.main !== 'function') throw new Error(`bench/${name}.ts does not export main(args)`);
  await mod.main(args);
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const [name, ...rest] = process.argv.slice(2);
  if (name === '--list') {
    console.log(listBenches().join('\n'));
  } else if (name === undefined || name === '--help' || name === '-h') {
    process.stdout.write(benchUsage());
  } else {
    try {
      await runBench(name, rest);
    } catch (e) {
      console.error(e instanceof Error ? e.message : e);
      process.exitCode = e instanceof BenchUsageError || e instanceof BenchNotFoundError ? 2 : 1;
    }
  }
}
