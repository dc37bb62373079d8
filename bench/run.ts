// `pnpm bench NAME [args]` runs bench/NAME.ts; `pnpm bench` lists the benchmarks.
// Each benchmark is a module exporting `main(args: string[]): Promise<void> | void`
// (see bench/README.md); it prints its figures and, last, one JSON line
// `{"bench":NAME,...,"ratio":R}` against a reference measured in the same run.

import { readdirSync } from 'node:fs';
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
  const mod = (await import(pathToFileURL(path.join(dir, `${name}.ts`)).href)) as { main?: (a: string[]) => unknown };
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
