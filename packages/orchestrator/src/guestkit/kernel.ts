// The IOMMU guest kernel: Debian's linux-source-6.12 (pinned in
// guest.lock.json like the rest of the kit, verified through the signed
// index chain), the Kconfig widening in kernel/iommu-riscv.patch, a small
// config from kernel/iommu.config on top of allnoconfig, cross-built with
// Debian's gcc-riscv64-linux-gnu. Cached under ~/.cache/vmm/kernel/ by
// source version + a hash of everything that goes into the build, and
// reproducible (KBUILD_BUILD_TIMESTAMP/USER/HOST fixed, -ffile-prefix-map
// through the fixed O= layout, no localversion from git).
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
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
const KERNEL_BUILDER_VERSION = '1';

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

/** Fixed build identity (Documentation/kbuild/reproducible-builds.rst). */
function reproducibleEnv(sourceVersion: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ARCH: 'riscv',
    CROSS_COMPILE,
    KBUILD_BUILD_TIMESTAMP: '2025-01-01 00:00:00 UTC',
    KBUILD_BUILD_USER: 'vmm',
    KBUILD_BUILD_HOST: 'vmm',
    KBUILD_BUILD_VERSION: '1',
    LOCALVERSION: '',
    KBUILD_VERBOSE: '',
    LC_ALL: 'C',
    TZ: 'UTC',
    // Debian's source tree has no .git; make sure scripts/setlocalversion finds none above it either.
    GIT_CEILING_DIRECTORIES: kernelCacheDir(),
    VMM_KERNEL_SOURCE: sourceVersion,
  };
}

/**
 * Runs make, writing its output to `log` and reporting progress (objects
 * compiled so far, every few seconds). Rejects with the log's tail.
 */
function make(args: string[], cwd: string, env: NodeJS.ProcessEnv, log: string, reporter: Reporter, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(log, { flags: 'a' });
    const child = spawn('nice', ['-n', '10', 'make', ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let compiled = 0;
    let tail: string[] = [];
    let last = Date.now();
    const started = Date.now();
    const onData = (b: Buffer): void => {
      out.write(b);
      for (const line of b.toString('utf8').split('\n')) {
        if (/^\s+(CC|AS|LD|AR)\b/.test(line)) compiled++;
        if (line.trim()) tail = [...tail.slice(-19), line];
      }
      if (Date.now() - last > 5000) {
        last = Date.now();
        reporter.info(`kernel: ${what}: ${compiled} steps done, ${Math.round((last - started) / 1000)} s`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => {
      out.end();
      reject(new GuestKitError('ERR_GUEST_TOOL', `make not found (${(e as Error).message}; Debian package make)`));
    });
    child.on('close', (code) => {
      out.end();
      if (code === 0) {
        reporter.info(`kernel: ${what}: done, ${compiled} steps in ${Math.round((Date.now() - started) / 1000)} s`);
        resolve();
      } else {
        reject(new GuestKitError('ERR_GUEST_KERNEL', `make ${args.join(' ')} failed with status ${String(code)}; full log ${log}; last lines:\n${tail.join('\n')}`));
      }
    });
  });
}

/**
 * Builds (or finds in the cache) the IOMMU guest kernel and returns its
 * Image. Steps: lock + fetch linux-source-6.12, unpack its tarball once per
 * source version and patch, allnoconfig with the fragment, check every
 * fragment option stuck, make Image.
 */
export async function buildIommuKernel(opts: KernelBuildOptions = {}): Promise<BuiltKernel> {
  const reporter = opts.reporter ?? silentReporter;
  const src = await ensureKernelSourceLocked(reporter, opts.lockPath);
  const fragmentText = await readFile(IOMMU_CONFIG_FRAGMENT, 'utf8');
  const patchText = await readFile(IOMMU_KCONFIG_PATCH, 'utf8');
  const gcc = (await tool(`${CROSS_COMPILE}gcc`, ['--version'], 'gcc-riscv64-linux-gnu')).split('\n')[0]!;
  const treeKey = createHash('sha256').update(JSON.stringify({ src: src.sha256, patch: patchText })).digest('hex').slice(0, 12);
  const key = createHash('sha256')
    .update(JSON.stringify({ v: KERNEL_BUILDER_VERSION, src: src.sha256, patch: patchText, fragment: fragmentText, gcc }))
    .digest('hex')
    .slice(0, 16);
  const base = kernelCacheDir();
  const outDir = join(base, `iommu-${src.version}-${key}`);
  const image = join(outDir, 'Image');
  const result = (cached: boolean): BuiltKernel => ({ image, config: join(outDir, 'config'), log: join(outDir, 'build.log'), sourceVersion: src.version, key, cached });
  if (!opts.force && existsSync(join(outDir, 'complete')) && readFileSync(join(outDir, 'complete'), 'utf8').trim() === key) return result(true);

  if (!isUnpacked(src)) await unpack(src, debianMirror(), reporter);
  const tarball = join(pkgDir(src), 'tree', 'usr', 'src', `${src.name}.tar.xz`);
  if (!existsSync(tarball)) throw new GuestKitError('ERR_GUEST_EXTRACT', `${tarball} is missing from ${src.name} ${src.version}; remove ${pkgDir(src)} and retry`);

  // The patched source tree, shared by every config built from it.
  const tree = join(base, `src-${src.version}-${treeKey}`);
  const treeDone = join(tree, '.vmm-complete');
  if (!existsSync(treeDone)) {
    reporter.info(`kernel: unpacking ${src.name} ${src.version} (about a minute)`);
    const tmp = `${tree}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    await tool('tar', ['-xJf', tarball, '-C', tmp, '--strip-components=1'], 'tar');
    reporter.info(`kernel: applying ${IOMMU_KCONFIG_PATCH}`);
    await tool('patch', ['-p1', '-d', tmp, '-i', IOMMU_KCONFIG_PATCH, '--forward', '--batch'], 'patch');
    await writeFile(join(tmp, '.vmm-complete'), `${treeKey}\n`);
    await rm(tree, { recursive: true, force: true });
    await rename(tmp, tree);
  }

  const build = join(base, `build-${key}`);
  await mkdir(build, { recursive: true });
  await mkdir(outDir, { recursive: true });
  const log = join(outDir, 'build.log');
  await writeFile(log, '');
  const env = reproducibleEnv(src.version);
  const jobs = opts.jobs ?? cpus().length;
  const fragmentFile = join(build, 'vmm-fragment.config');
  await writeFile(fragmentFile, fragmentText);
  // KCONFIG_ALLCONFIG: allnoconfig starts from the fragment's values
  // (Documentation/kbuild/kconfig.rst), everything else off.
  await make([`O=${build}`, `KCONFIG_ALLCONFIG=${fragmentFile}`, 'allnoconfig'], tree, env, log, reporter, 'allnoconfig');
  const final = parseKconfig(await readFile(join(build, '.config'), 'utf8'));
  const unmet = unmetOptions(parseKconfig(fragmentText), final);
  if (unmet.length) {
    throw new GuestKitError(
      'ERR_GUEST_KERNEL',
      `the kernel config dropped ${unmet.map((u) => `${u.option}=${u.want} (got ${u.got})`).join(', ')}; a dependency forbids it — fix ${IOMMU_CONFIG_FRAGMENT} or ${IOMMU_KCONFIG_PATCH}`,
    );
  }
  reporter.info(`kernel: building Image with ${jobs} jobs (log ${log})`);
  await make([`O=${build}`, `-j${jobs}`, 'Image'], tree, env, log, reporter, 'Image');
  await copyFile(join(build, 'arch', 'riscv', 'boot', 'Image'), `${image}.tmp`);
  await rename(`${image}.tmp`, image);
  await copyFile(join(build, '.config'), join(outDir, 'config'));
  await writeFile(join(outDir, 'complete'), `${key}\n`);
  return result(false);
}
