// The IOMMU guest kernel: Debian's linux-source-6.12 (pinned in
// guest.lock.json like the rest of the kit, verified through the signed
// index chain), the Kconfig widening in kernel/iommu-riscv.patch, a small
// config from kernel/iommu.config on top of allnoconfig, cross-built with
// Debian's gcc-riscv64-linux-gnu. Cached under ~/.cache/vmm/kernel/ by
// source version + a hash of everything that goes into the build, and
// reproducible: build identity fixed, source and build paths mapped away
// (reproducibleEnv), no modules (so no signing key), no localversion from
// git; `verifyIommuKernel` builds it a second time elsewhere and compares.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import lockfile from 'proper-lockfile';
import { parsePackages } from './debian.ts';
import { silentReporter, type Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { DEFAULT_LOCK_PATH, GUEST_ARCH, fetchIndex, guestCacheDir, isUnpacked, kernelSourceFor, lockEntry, pkgDir, readLock, unpack, type LockedPackage } from './kit.ts';
import { debianMirror } from './sources.ts';

const run = promisify(execFile);

const HERE = dirname(fileURLToPath(import.meta.url));
/** The config fragment (merged over allnoconfig) and the Kconfig patch, checked into the repo. */
export const IOMMU_CONFIG_FRAGMENT = join(HERE, 'kernel', 'iommu.config');
export const IOMMU_KCONFIG_PATCH = join(HERE, 'kernel', 'iommu-riscv.patch');

export const CROSS_COMPILE = 'riscv64-linux-gnu-';
/** Debian packages the build needs on the host (also in scripts/setup.sh). @public */
export const KERNEL_BUILD_PACKAGES = ['gcc-riscv64-linux-gnu', 'make', 'bc', 'flex', 'bison', 'libssl-dev', 'libelf-dev', 'patch', 'xz-utils'] as const;
/** Bumped when the build procedure itself changes, so old cache entries are not reused. */
const KERNEL_BUILDER_VERSION = '2';

/** `${XDG_CACHE_HOME:-~/.cache}/vmm/kernel` */
export function kernelCacheDir(): string {
  return join(dirname(guestCacheDir()), 'kernel');
}

/**
 * The linux-source-6.12 entry of the lock; when the lock predates it, it is
 * resolved from the archive's signed trixie index and added (the other
 * entries are left as they are).
 */
export async function ensureKernelSourceLocked(reporter: Reporter, lockPath = DEFAULT_LOCK_PATH): Promise<LockedPackage> {
  const lock = readLock(lockPath);
  if (!lock) throw new GuestKitError('ERR_GUEST_LOCK', `${lockPath} not found; run \`pnpm guest fetch\` first`);
  const have = lock.packages.find((p) => p.role === 'kernel-source');
  if (have) return have;
  reporter.info(`resolving linux-source-6.12 from the ${lock.suite} index (not yet in ${lockPath})`);
  const { text } = await fetchIndex(debianMirror(), join(guestCacheDir(), 'index'), reporter);
  const index = parsePackages(text).filter((p) => p.Architecture === GUEST_ARCH || p.Architecture === 'all');
  const kernel = lock.packages.find((p) => p.role === 'kernel')!;
  const entry = lockEntry('kernel-source', kernelSourceFor(index, kernel.version));
  lock.packages.push(entry);
  await writeFile(lockPath, `${JSON.stringify(lock, null, 2)}\n`);
  reporter.info(`wrote ${lockPath}: ${entry.name} ${entry.version}`);
  return entry;
}

async function tool(cmd: string, args: string[], pkg: string): Promise<string> {
  try {
    const { stdout } = await run(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new GuestKitError('ERR_GUEST_TOOL', `${cmd} not found (Debian package ${pkg}; scripts/setup.sh installs it)`);
    throw new GuestKitError('ERR_GUEST_TOOL', `${cmd} ${args.join(' ')} failed: ${String(err.stderr ?? err.message).trim().split('\n').slice(-3).join(' / ')}`);
  }
}

/** Parses "CONFIG_X=y", "CONFIG_X=\"s\"", "# CONFIG_X is not set" lines into name → value ('n' for not set). */
export function parseKconfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const set = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (set) {
      out.set(set[1]!, set[2]!);
      continue;
    }
    const unset = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
    if (unset) out.set(unset[1]!, 'n');
  }
  return out;
}

/**
 * Options of the fragment that did not end up in the final .config with the
 * asked value (Kconfig silently drops what a dependency forbids — exactly
 * how VIRTIO_IOMMU vanishes on riscv without the patch).
 */
export function unmetOptions(fragment: Map<string, string>, final: Map<string, string>): { option: string; want: string; got: string }[] {
  const out: { option: string; want: string; got: string }[] = [];
  for (const [option, want] of fragment) {
    const got = final.get(option) ?? 'n';
    if (got !== want) out.push({ option, want, got });
  }
  return out;
}

export interface KernelBuildOptions {
  reporter?: Reporter;
  jobs?: number;
  lockPath?: string;
  /** Rebuild even if the cache has this Image. */
  force?: boolean;
}

export interface BuiltKernel {
  image: string;
  /** The final .config, for inspection. */
  config: string;
  /** The build log (make's whole output). */
  log: string;
  sourceVersion: string;
  key: string;
  cached: boolean;
}

/** 2025-01-01 00:00:00 UTC: the one build date of every IOMMU kernel (uts version, SOURCE_DATE_EPOCH). */
const BUILD_EPOCH = 1_735_689_600;

/**
 * Fixed build identity (Documentation/kbuild/reproducible-builds.rst):
 * timestamp, user, host and version of the uts string, SOURCE_DATE_EPOCH
 * for anything that stamps files, and the source and build directories
 * mapped away in every compiler and assembler output (the kernel maps only
 * __FILE__ of the source tree itself; KCFLAGS/KAFLAGS extend that to debug
 * info and to the build tree, so the Image does not depend on where the
 * cache lives).
 */
function reproducibleEnv(tree: string, build: string): NodeJS.ProcessEnv {
  const maps = `-ffile-prefix-map=${tree}/= -ffile-prefix-map=${build}/=`;
  return {
    ...process.env,
    ARCH: 'riscv',
    CROSS_COMPILE,
    KBUILD_BUILD_TIMESTAMP: '2025-01-01 00:00:00 UTC', // = BUILD_EPOCH
    KBUILD_BUILD_USER: 'vmm',
    KBUILD_BUILD_HOST: 'vmm',
    KBUILD_BUILD_VERSION: '1',
    SOURCE_DATE_EPOCH: String(BUILD_EPOCH),
    KCFLAGS: maps,
    KAFLAGS: maps,
    LOCALVERSION: '',
    KBUILD_VERBOSE: '',
    LC_ALL: 'C',
    TZ: 'UTC',
    // Debian's source tree has no .git; make sure scripts/setlocalversion finds none above it either.
    GIT_CEILING_DIRECTORIES: dirname(tree),
  };
}

/** How often a running build reports its progress (a plain line on stderr, terminal or not). */
const PROGRESS_INTERVAL_MS = 10_000;

/**
 * Runs make, writing its whole output to `log` and reporting progress: a
 * line every PROGRESS_INTERVAL_MS with the steps done so far and the
 * latest one, also while make prints nothing (a long link). Rejects with
 * the log's tail.
 */
function make(args: string[], cwd: string, env: NodeJS.ProcessEnv, log: string, reporter: Reporter, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(log, { flags: 'a' });
    const child = spawn('nice', ['-n', '10', 'make', ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let steps = 0;
    let latest = '';
    let tail: string[] = [];
    let partial = '';
    const started = Date.now();
    const secs = (): number => Math.round((Date.now() - started) / 1000);
    const timer = setInterval(() => reporter.info(`kernel: ${what}: ${steps} steps, ${secs()} s${latest ? ` (${latest})` : ''}`), PROGRESS_INTERVAL_MS);
    const onData = (b: Buffer): void => {
      out.write(b);
      const lines = (partial + b.toString('utf8')).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        // Kbuild's quiet lines: "  CC      drivers/iommu/virtio-iommu.o".
        const m = /^\s+([A-Z][A-Z0-9_]*)\s+(\S.*)$/.exec(line);
        if (m && !line.includes(':')) {
          steps++;
          latest = `${m[1]} ${m[2]}`;
        }
        if (line.trim()) tail = [...tail.slice(-19), line];
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => {
      clearInterval(timer);
      out.end();
      reject(new GuestKitError('ERR_GUEST_TOOL', `make not found (${(e as Error).message}; Debian package make)`));
    });
    child.on('close', (code) => {
      clearInterval(timer);
      out.end();
      if (code === 0) {
        reporter.info(`kernel: ${what}: done, ${steps} steps in ${secs()} s`);
        resolve(steps);
      } else {
        reject(new GuestKitError('ERR_GUEST_KERNEL', `make ${args.join(' ')} failed with status ${String(code)}; full log ${log}; last lines:\n${tail.join('\n')}`));
      }
    });
  });
}

interface BuildInputs {
  src: LockedPackage;
  fragmentText: string;
  patchText: string;
  key: string;
  treeKey: string;
}

/** What goes into the build, hashed into the cache key: source, patch, fragment, compiler, builder version. */
async function buildInputs(reporter: Reporter, lockPath?: string): Promise<BuildInputs> {
  const src = await ensureKernelSourceLocked(reporter, lockPath);
  const fragmentText = await readFile(IOMMU_CONFIG_FRAGMENT, 'utf8');
  const patchText = await readFile(IOMMU_KCONFIG_PATCH, 'utf8');
  const gcc = (await tool(`${CROSS_COMPILE}gcc`, ['--version'], 'gcc-riscv64-linux-gnu')).split('\n')[0]!;
  const treeKey = createHash('sha256').update(JSON.stringify({ src: src.sha256, patch: patchText })).digest('hex').slice(0, 12);
  const key = createHash('sha256')
    .update(JSON.stringify({ v: KERNEL_BUILDER_VERSION, src: src.sha256, patch: patchText, fragment: fragmentText, gcc }))
    .digest('hex')
    .slice(0, 16);
  return { src, fragmentText, patchText, key, treeKey };
}

/**
 * Holds an exclusive lock on `target` (a path in the cache) while `fn`
 * runs, so two processes (two tests, two engineers sharing the cache)
 * never build into the same directory at once: the second waits, then
 * finds the first one's result. A lock whose holder died goes stale after
 * a few seconds (proper-lockfile refreshes it while the holder lives).
 */
export async function withCacheLock<T>(target: string, what: string, reporter: Reporter, fn: () => Promise<T>): Promise<T> {
  await mkdir(dirname(target), { recursive: true });
  const opts = { realpath: false, stale: 20_000, update: 5_000, lockfilePath: `${target}.lock` };
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(target, opts);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
    reporter.info(`${what}: another process is building it (lock ${target}.lock); waiting`);
    release = await lockfile.lock(target, { ...opts, retries: { retries: 4 * 3600, minTimeout: 1000, maxTimeout: 1000, factor: 1 } });
  }
  try {
    return await fn();
  } finally {
    await release();
  }
}

/** The patched source tree of this source version and patch, unpacked once and shared by every build from it. */
async function ensureSourceTree(inputs: BuildInputs, reporter: Reporter): Promise<string> {
  const { src, treeKey } = inputs;
  const tree = join(kernelCacheDir(), `src-${src.version}-${treeKey}`);
  const treeDone = join(tree, '.vmm-complete');
  if (existsSync(treeDone)) return tree;
  return withCacheLock(tree, 'kernel: source tree', reporter, async () => {
    if (existsSync(treeDone)) return tree;
    if (!isUnpacked(src)) await unpack(src, debianMirror(), reporter);
    const tarball = join(pkgDir(src), 'tree', 'usr', 'src', `${src.name}.tar.xz`);
    if (!existsSync(tarball)) throw new GuestKitError('ERR_GUEST_EXTRACT', `${tarball} is missing from ${src.name} ${src.version}; remove ${pkgDir(src)} and retry`);
    reporter.info(`kernel: unpacking ${src.name} ${src.version} (about a minute)`);
    const tmp = `${tree}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    try {
      await mkdir(tmp, { recursive: true });
      await tool('tar', ['-xJf', tarball, '-C', tmp, '--strip-components=1'], 'tar');
      reporter.info(`kernel: applying ${IOMMU_KCONFIG_PATCH}`);
      await tool('patch', ['-p1', '-d', tmp, '-i', IOMMU_KCONFIG_PATCH, '--forward', '--batch'], 'patch');
      await writeFile(join(tmp, '.vmm-complete'), `${treeKey}\n`);
      await rm(tree, { recursive: true, force: true });
      await rename(tmp, tree);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return tree;
  });
}

/**
 * One build from scratch: allnoconfig with the fragment in an empty build
 * directory `build`, every fragment option checked, make Image. Returns
 * the Image's path inside `build`.
 */
async function buildOnce(inputs: BuildInputs, tree: string, build: string, log: string, jobs: number, reporter: Reporter): Promise<{ image: string; config: string; steps: number }> {
  await rm(build, { recursive: true, force: true });
  await mkdir(build, { recursive: true });
  await writeFile(log, '');
  const env = reproducibleEnv(tree, build);
  const fragmentFile = join(build, 'vmm-fragment.config');
  await writeFile(fragmentFile, inputs.fragmentText);
  // KCONFIG_ALLCONFIG: allnoconfig starts from the fragment's values
  // (Documentation/kbuild/kconfig.rst), everything else off.
  await make([`O=${build}`, `KCONFIG_ALLCONFIG=${fragmentFile}`, 'allnoconfig'], tree, env, log, reporter, 'allnoconfig');
  const final = parseKconfig(await readFile(join(build, '.config'), 'utf8'));
  const unmet = unmetOptions(parseKconfig(inputs.fragmentText), final);
  if (unmet.length) {
    throw new GuestKitError(
      'ERR_GUEST_KERNEL',
      `the kernel config dropped ${unmet.map((u) => `${u.option}=${u.want} (got ${u.got})`).join(', ')}; a dependency forbids it — fix ${IOMMU_CONFIG_FRAGMENT} or ${IOMMU_KCONFIG_PATCH}`,
    );
  }
  reporter.info(`kernel: building Image with ${jobs} jobs in ${build} (log ${log})`);
  const steps = await make([`O=${build}`, `-j${jobs}`, 'Image'], tree, env, log, reporter, 'Image');
  return { image: join(build, 'arch', 'riscv', 'boot', 'Image'), config: join(build, '.config'), steps };
}

/**
 * Builds (or finds in the cache) the IOMMU guest kernel and returns its
 * Image. Steps: lock + fetch linux-source-6.12, unpack its tarball once per
 * source version and patch, allnoconfig with the fragment, check every
 * fragment option stuck, make Image. Concurrent callers of the same key
 * wait for one build.
 */
export async function buildIommuKernel(opts: KernelBuildOptions = {}): Promise<BuiltKernel> {
  const reporter = opts.reporter ?? silentReporter;
  const inputs = await buildInputs(reporter, opts.lockPath);
  const { src, key } = inputs;
  const outDir = join(kernelCacheDir(), `iommu-${src.version}-${key}`);
  const image = join(outDir, 'Image');
  const result = (cached: boolean): BuiltKernel => ({ image, config: join(outDir, 'config'), log: join(outDir, 'build.log'), sourceVersion: src.version, key, cached });
  const isDone = (): boolean => existsSync(join(outDir, 'complete')) && readFileSync(join(outDir, 'complete'), 'utf8').trim() === key;
  if (!opts.force && isDone()) return result(true);
  const tree = await ensureSourceTree(inputs, reporter);
  return withCacheLock(outDir, `kernel ${key}`, reporter, async () => {
    if (!opts.force && isDone()) return result(true);
    const started = Date.now();
    await mkdir(outDir, { recursive: true });
    await rm(join(outDir, 'complete'), { force: true });
    const built = await buildOnce(inputs, tree, join(kernelCacheDir(), `build-${key}`), join(outDir, 'build.log'), opts.jobs ?? cpus().length, reporter);
    await copyFile(built.image, `${image}.tmp`);
    await rename(`${image}.tmp`, image);
    await copyFile(built.config, join(outDir, 'config'));
    await writeFile(join(outDir, 'complete'), `${key}\n`);
    reporter.info(`kernel: Image sha256 ${await sha256File(image)} (${built.steps} steps, ${Math.round((Date.now() - started) / 1000)} s)`);
    return result(false);
  });
}

async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

export interface KernelVerification {
  /** The cached (or just built) Image and its sha256. */
  first: { image: string; sha256: string };
  /** The second build, from a copy of the source tree at another path into another build directory. */
  second: { image: string; sha256: string };
  identical: boolean;
  /** When they differ: the number of differing bytes and the first differing offset. */
  differences?: { bytes: number; firstOffset: number; sizes: [number, number] };
}

/**
 * Reproducibility check (`pnpm guest kernel --iommu --verify`): makes sure
 * the cached Image exists, then builds the same inputs again from a
 * hard-linked copy of the source tree at another path into another build
 * directory, and compares the two Images byte for byte. The second tree
 * and build directory are removed afterwards; the second Image is kept
 * beside the first as Image.verify when they differ, for inspection.
 */
export async function verifyIommuKernel(opts: KernelBuildOptions = {}): Promise<KernelVerification> {
  const reporter = opts.reporter ?? silentReporter;
  const first = await buildIommuKernel(opts);
  const inputs = await buildInputs(reporter, opts.lockPath);
  const tree = await ensureSourceTree(inputs, reporter);
  const scratch = join(kernelCacheDir(), `verify-${inputs.key}-${process.pid}`);
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  try {
    const tree2 = join(scratch, 'linux');
    reporter.info(`kernel: verify: second source tree ${tree2} (hard links to ${tree})`);
    await tool('cp', ['-al', tree, tree2], 'coreutils');
    const built = await buildOnce(inputs, tree2, join(scratch, 'build'), join(scratch, 'build.log'), opts.jobs ?? cpus().length, reporter);
    const a = await readFile(first.image);
    const b = await readFile(built.image);
    const out: KernelVerification = {
      first: { image: first.image, sha256: createHash('sha256').update(a).digest('hex') },
      second: { image: built.image, sha256: createHash('sha256').update(b).digest('hex') },
      identical: a.equals(b),
    };
    if (!out.identical) {
      let bytes = Math.abs(a.length - b.length);
      let firstOffset = -1;
      for (let i = 0; i < Math.min(a.length, b.length); i++) {
        if (a[i] !== b[i]) {
          bytes++;
          if (firstOffset < 0) firstOffset = i;
        }
      }
      out.differences = { bytes, firstOffset: firstOffset < 0 ? Math.min(a.length, b.length) : firstOffset, sizes: [a.length, b.length] };
      const kept = `${first.image}.verify`;
      await copyFile(built.image, kept);
      out.second.image = kept;
    } else {
      out.second.image = `${scratch}/build/arch/riscv/boot/Image (removed)`;
    }
    return out;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
