// `pnpm bench NAME [args]` runs bench/NAME.ts; `pnpm bench` lists the benchmarks.
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

export async function runBench(name: string, args: string[], dir = here): Promise<void> {
  const known = listBenches(dir);
  if (!known.includes(name)) throw new BenchNotFoundError(name, known);
  const file = path.join(dir, `${name}.ts`);
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
  if (name === undefined || name === '--list') {
    console.log(listBenches().join('\n'));
  } else {
    try {
      await runBench(name, rest);
    } catch (e) {
      console.error(e instanceof Error ? e.message : e);
      process.exitCode = 1;
    }
  }
}
