// The guest kit: Debian trixie riscv64 kernel (+ modules), busybox-static
// and OpenSBI, resolved from the archive's signed index, pinned in
// guest.lock.json, cached outside the repository keyed by version.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { newest, parsePackages, parseRelease, verifyReleaseSignature, type PackageStanza, type ReleaseFile } from './debian.ts';
import { download, fetchText, silentReporter, type Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { debianMirror } from './sources.ts';

const run = promisify(execFile);

export const GUEST_SUITE = 'trixie';
export const GUEST_ARCH = 'riscv64';
const COMPONENT = 'main';
const INDEX_PATH = `${COMPONENT}/binary-${GUEST_ARCH}/Packages.xz`;

/** 'kernel-source' (linux-source-6.12, for the IOMMU kernel) is fetched only when that kernel is built. */
export type PackageRole = 'kernel' | 'busybox' | 'opensbi' | 'kernel-source' | 'guest-package';

/** The roles every `pnpm guest fetch` brings; the others are fetched on demand. */
const BASE_ROLES: readonly PackageRole[] = ['kernel', 'busybox', 'opensbi'];

/** Debian's kernel source package of the stock kernel's upstream series (architecture all). */
export const KERNEL_SOURCE_PACKAGE = 'linux-source-6.12';

export interface LockedPackage {
  role: PackageRole;
  name: string;
  version: string;
  filename: string;
  size: number;
  sha256: string;
  /** The metapackage it was resolved through, if any. */
  via?: string;
}

export interface GuestLock {
  format: 1;
  suite: string;
  architecture: string;
  component: string;
  index: { path: string; sha256: string; releaseDate: string };
  packages: LockedPackage[];
}

export interface GuestKit {
  /** e.g. "6.12.107+deb13-riscv64" */
  kernelVersion: string;
  /** The kernel Image (EFI-stub RISC-V Image). */
  kernel: string;
  /** usr/lib/modules/<kernelVersion> inside the unpacked kernel package, with modules.dep. */
  modulesDir: string;
  busybox: string;
  opensbi: { fwDynamic: string; fwJump: string };
  packages: LockedPackage[];
  cacheDir: string;
}

/** `${XDG_CACHE_HOME:-~/.cache}/vmm/guest` */
export function guestCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'vmm', 'guest');
}

/** guest.lock.json at the repository root. */
export const DEFAULT_LOCK_PATH = fileURLToPath(new URL('../../../../guest.lock.json', import.meta.url));

export function readLock(path = DEFAULT_LOCK_PATH): GuestLock | null {
  if (!existsSync(path)) return null;
  let lock: GuestLock;
  try {
    lock = JSON.parse(readFileSync(path, 'utf8')) as GuestLock;
  } catch (e) {
    throw new GuestKitError('ERR_GUEST_LOCK', `${path} is not valid JSON (${(e as Error).message}); fix it or run \`pnpm guest fetch --update\``);
  }
  const roles = new Set(lock.packages?.map((p) => p.role));
  if (lock.format !== 1 || !roles.has('kernel') || !roles.has('busybox') || !roles.has('opensbi')) {
    throw new GuestKitError('ERR_GUEST_LOCK', `${path} lacks the kernel, busybox or opensbi entry (format ${String(lock.format)}); run \`pnpm guest fetch --update\``);
  }
  for (const p of lock.packages) {
    if (!/^[0-9a-f]{64}$/.test(p.sha256) || !p.filename.startsWith('pool/')) {
      throw new GuestKitError('ERR_GUEST_LOCK', `${path}: entry ${p.name} has a bad sha256 or filename`);
    }
  }
  return lock;
}

async function signedRelease(mirror: string, suite: string, reporter: Reporter): Promise<ReleaseFile> {
  const url = `${mirror}/dists/${suite}/InRelease`;
  const text = await fetchText(url, `${suite} InRelease`, reporter);
  const bad = await verifyReleaseSignature(text);
  if (bad) {
    reporter.warn(`cannot verify the signature of dists/${suite}/InRelease: ${bad}; relying on the hash chain from it alone`);
  }
  return parseRelease(text);
}

/**
 * Downloads and verifies main/binary-riscv64/Packages.xz of trixie. A live
 * mirror can serve an index a sync behind or ahead of InRelease (FACTS.md);
 * so: by-hash first (immutable URLs), then the plain path, and if its hash
 * matches no entry of trixie's InRelease, the InRelease of the alias suite
 * currently naming trixie ("stable"…) is checked too — still a signed
 * chain, just an older snapshot. Returns the decompressed text.
 */
export async function fetchIndex(
  mirror: string,
  dir: string,
  reporter: Reporter,
  which: { component: string; arch: string } = { component: COMPONENT, arch: GUEST_ARCH },
): Promise<{ text: string; sha256: string; release: ReleaseFile }> {
  const indexPath = `${which.component}/binary-${which.arch}/Packages.xz`;
  const primary = await signedRelease(mirror, GUEST_SUITE, reporter);
  if (primary.codename && primary.codename !== GUEST_SUITE) {
    throw new GuestKitError('ERR_GUEST_INDEX', `dists/${GUEST_SUITE}/InRelease names codename ${primary.codename}`);
  }
  const want = primary.sha256.get(indexPath);
  if (!want) throw new GuestKitError('ERR_GUEST_INDEX', `dists/${GUEST_SUITE}/InRelease lists no ${indexPath}`);
  await mkdir(dir, { recursive: true });
  const dest = join(dir, `Packages-${GUEST_SUITE}-${which.component === COMPONENT ? '' : `${which.component}-`}${which.arch}.xz`);
  let chosen: { sha256: string; release: ReleaseFile } | null = null;
  if (primary.acquireByHash) {
    try {
      await download({
        url: `${mirror}/dists/${GUEST_SUITE}/${which.component}/binary-${which.arch}/by-hash/SHA256/${want.sha256}`,
        dest, sha256: want.sha256, size: want.size, label: `${indexPath} (by-hash)`, reporter: silentReporter, attempts: 1,
      });
      chosen = { sha256: want.sha256, release: primary };
    } catch {
      chosen = null;
    }
  }
  if (!chosen) {
    const got = await download({ url: `${mirror}/dists/${GUEST_SUITE}/${indexPath}`, dest, label: indexPath, reporter });
    if (got === want.sha256) chosen = { sha256: got, release: primary };
    else {
      for (const alias of ['stable', 'testing', 'oldstable']) {
        let r: ReleaseFile;
        try {
          r = await signedRelease(mirror, alias, silentReporter);
        } catch {
          continue;
        }
        if (r.codename !== GUEST_SUITE) continue;
        if (r.sha256.get(indexPath)?.sha256 === got) {
          reporter.warn(`the mirror's ${indexPath} (sha256 ${got.slice(0, 12)}…) is out of step with dists/${GUEST_SUITE}/InRelease of ${primary.date}; it matches the signed dists/${alias}/InRelease of ${r.date} (codename ${GUEST_SUITE}), using that`);
          chosen = { sha256: got, release: r };
          break;
        }
      }
      if (!chosen) {
        throw new GuestKitError('ERR_GUEST_HASH', `${indexPath}: SHA256 ${got} matches no signed InRelease for ${GUEST_SUITE} (expected ${want.sha256}); the mirror may be syncing, try again in a few minutes`);
      }
    }
  }
  const { stdout } = await run('xz', ['-dc', dest], { maxBuffer: 512 * 1024 * 1024, encoding: 'utf8' }).catch((e: unknown) => {
    throw new GuestKitError('ERR_GUEST_TOOL', `xz -dc ${dest} failed: ${(e as Error).message} (Debian package xz-utils)`);
  });
  return { text: stdout, sha256: chosen.sha256, release: chosen.release };
}

export function lockEntry(role: PackageRole, p: PackageStanza, via?: string): LockedPackage {
  if (!/^[0-9a-f]{64}$/.test(p.SHA256) || !p.Filename) {
    throw new GuestKitError('ERR_GUEST_INDEX', `index entry ${p.Package} ${p.Version} has no SHA256 or Filename`);
  }
  return { role, name: p.Package, version: p.Version, filename: p.Filename, size: p.Size, sha256: p.SHA256, ...(via ? { via } : {}) };
}

/** Resolves the three packages from the live archive (what `--update` does). */
export async function resolveGuestPackages(mirror: string, reporter: Reporter): Promise<GuestLock> {
  const { text, sha256, release } = await fetchIndex(mirror, join(guestCacheDir(), 'index'), reporter);
  const index = parsePackages(text).filter((p) => p.Architecture === GUEST_ARCH || p.Architecture === 'all');
  // linux-image-riscv64 is a metapackage depending on exactly one concrete
  // linux-image-<abi>-riscv64 (= version); follow that dependency.
  const meta = newest(index, 'linux-image-riscv64');
  const dep = /(linux-image-6\.12\.[^\s,(]*-riscv64)\b/.exec(meta.Depends)?.[1];
  if (!dep) throw new GuestKitError('ERR_GUEST_RESOLVE', `linux-image-riscv64 ${meta.Version} depends on no linux-image-6.12.*-riscv64 (Depends: ${meta.Depends})`);
  return {
    format: 1,
    suite: GUEST_SUITE,
    architecture: GUEST_ARCH,
    component: COMPONENT,
    index: { path: INDEX_PATH, sha256, releaseDate: release.date },
    packages: [
      lockEntry('kernel', newest(index, dep), 'linux-image-riscv64'),
      lockEntry('busybox', newest(index, 'busybox-static')),
      lockEntry('opensbi', newest(index, 'opensbi')),
      // Fetched only by `pnpm guest kernel`; an index without it still gives a usable kit.
      ...(index.some((p) => p.Package === KERNEL_SOURCE_PACKAGE) ? [lockEntry('kernel-source', kernelSourceFor(index, newest(index, dep).Version))] : []),
    ],
  };
}

/**
 * linux-source-6.12 of the same Debian version as the stock kernel when the
 * index still has it (same upstream release and Debian patches), else the
 * newest one.
 */
export function kernelSourceFor(index: PackageStanza[], kernelVersion: string): PackageStanza {
  return index.find((p) => p.Package === KERNEL_SOURCE_PACKAGE && p.Version === kernelVersion) ?? newest(index, KERNEL_SOURCE_PACKAGE);
}

export function pkgDir(p: LockedPackage): string {
  // Epochs ("1:1.37.0-6") hold a ':' that some tools dislike in paths.
  return join(guestCacheDir(), `${p.name}_${p.version.replace(/:/g, '%3a')}`);
}

export function isUnpacked(p: LockedPackage): boolean {
  try {
    return readFileSync(join(pkgDir(p), 'complete'), 'utf8').trim() === p.sha256;
  } catch {
    return false;
  }
}

function kernelVersionOf(tree: string): string {
  const dir = join(tree, 'usr/lib/modules');
  const versions = existsSync(dir) ? readdirSync(dir) : [];
  if (versions.length !== 1) throw new GuestKitError('ERR_GUEST_EXTRACT', `expected one kernel version under ${dir}, found ${JSON.stringify(versions)}`);
  return versions[0]!;
}

/** Downloads (verifying the index hash), unpacks with dpkg-deb, and for the kernel runs depmod. */
export async function unpack(p: LockedPackage, mirror: string, reporter: Reporter): Promise<void> {
  const dir = pkgDir(p);
  await mkdir(dir, { recursive: true });
  const deb = join(dir, p.filename.split('/').pop()!);
  await download({ url: `${mirror}/${p.filename}`, dest: deb, sha256: p.sha256, size: p.size, label: `${p.name} ${p.version}`, reporter }).catch((e: unknown) => {
    if (e instanceof GuestKitError && e.code === 'ERR_GUEST_DOWNLOAD' && /HTTP 404/.test(e.message)) {
      throw new GuestKitError('ERR_GUEST_DOWNLOAD', `${e.message}; the archive no longer has ${p.name} ${p.version}: run \`pnpm guest fetch --update\``, { cause: e });
    }
    throw e;
  });
  const tmp = join(dir, `tree.tmp-${process.pid}`);
  await rm(tmp, { recursive: true, force: true });
  try {
    try {
      await run('dpkg-deb', ['-x', deb, tmp]);
    } catch (e) {
      throw new GuestKitError('ERR_GUEST_TOOL', `dpkg-deb -x ${deb} failed: ${(e as Error).message}`);
    }
    if (p.role === 'kernel') {
      // The package ships no modules.dep (it is made at install time): make
      // it over the unpacked tree (usr-merged: modules live in usr/lib/modules).
      const kver = kernelVersionOf(tmp);
      try {
        await run('depmod', ['-b', join(tmp, 'usr'), kver]);
      } catch (e) {
        throw new GuestKitError('ERR_GUEST_TOOL', `depmod -b ${tmp}/usr ${kver} failed: ${(e as Error).message} (Debian package kmod)`);
      }
    }
    await rm(join(dir, 'tree'), { recursive: true, force: true });
    await rename(tmp, join(dir, 'tree'));
  } finally {
    // A failed unpack leaves nothing half-written behind (the verified .deb stays).
    await rm(tmp, { recursive: true, force: true });
  }
  await writeFile(join(dir, 'complete'), `${p.sha256}\n`);
  reporter.info(`unpacked ${p.name} ${p.version}`);
}

function kitFromCache(lock: GuestLock): GuestKit {
  const by = (role: PackageRole): LockedPackage => lock.packages.find((p) => p.role === role)!;
  const ktree = join(pkgDir(by('kernel')), 'tree');
  const kver = kernelVersionOf(ktree);
  const sbi = join(pkgDir(by('opensbi')), 'tree/usr/lib/riscv64-linux-gnu/opensbi/generic');
  const kit: GuestKit = {
    kernelVersion: kver,
    kernel: join(ktree, 'boot', `vmlinux-${kver}`),
    modulesDir: join(ktree, 'usr/lib/modules', kver),
    busybox: join(pkgDir(by('busybox')), 'tree/usr/bin/busybox'),
    opensbi: { fwDynamic: join(sbi, 'fw_dynamic.bin'), fwJump: join(sbi, 'fw_jump.bin') },
    packages: lock.packages,
    cacheDir: guestCacheDir(),
  };
  for (const f of [kit.kernel, join(kit.modulesDir, 'modules.dep'), kit.busybox, kit.opensbi.fwDynamic, kit.opensbi.fwJump]) {
    if (!existsSync(f)) throw new GuestKitError('ERR_GUEST_EXTRACT', `${f} is missing from the unpacked guest kit; remove ${guestCacheDir()} and run \`pnpm guest fetch\``);
  }
  return kit;
}

export interface EnsureOptions {
  /** Re-resolve from the archive and rewrite the lock (`pnpm guest fetch --update`). */
  update?: boolean;
  reporter?: Reporter;
  lockPath?: string;
}

/**
 * Returns the guest kit, fetching what is missing. With a lock and a
 * complete cache this touches no network and takes milliseconds.
 */
export async function ensureGuestKit(opts: EnsureOptions = {}): Promise<GuestKit> {
  const reporter = opts.reporter ?? silentReporter;
  const lockPath = opts.lockPath ?? DEFAULT_LOCK_PATH;
  let lock = opts.update ? null : readLock(lockPath);
  if (lock && baseOf(lock).every(isUnpacked)) return kitFromCache(lock);
  const mirror = debianMirror();
  if (!lock) {
    reporter.info(`resolving ${GUEST_SUITE}/${GUEST_ARCH} packages from the Debian archive`);
    lock = await resolveGuestPackages(mirror, reporter);
    const old = existsSync(lockPath) ? await readFile(lockPath, 'utf8') : '';
    const text = `${JSON.stringify(lock, null, 2)}\n`;
    if (old !== text) {
      await writeFile(lockPath, text);
      reporter.info(`wrote ${lockPath}: ${lock.packages.map((p) => `${p.name} ${p.version}`).join(', ')}`);
    }
  }
  for (const p of baseOf(lock)) if (!isUnpacked(p)) await unpack(p, mirror, reporter);
  return kitFromCache(lock);
}

function baseOf(lock: GuestLock): LockedPackage[] {
  return lock.packages.filter((p) => BASE_ROLES.includes(p.role));
}

/**
 * Checks the RISC-V Linux Image header (Documentation/arch/riscv/boot-image-header.rst):
 * magic2 "RSC\x05" at offset 0x38 (and the EFI stub's "MZ" at 0 for Debian's).
 * Returns the image size the kernel asks for (header field image_size).
 */
export function checkKernelImage(bytes: Uint8Array, path: string): { imageSize: bigint; efiStub: boolean } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 64 || dv.getUint32(0x38, true) !== 0x05435352) {
    throw new GuestKitError('ERR_GUEST_KERNEL', `${path} is not a RISC-V Linux Image (no "RSC\\x05" magic at offset 0x38)`);
  }
  return { imageSize: dv.getBigUint64(0x10, true), efiStub: bytes[0] === 0x4d && bytes[1] === 0x5a };
}
