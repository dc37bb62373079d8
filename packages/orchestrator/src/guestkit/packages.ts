// Extra Debian riscv64 packages in the guest (`pnpm guest build --package
// iperf3`): the package and its Depends: closure, resolved from the same
// signed trixie index as the rest of the kit, pinned in guest.lock.json
// (role "guest-package", `via` the requested name), each .deb verified
// against the index's SHA256 and unpacked in the cache like the others.

import { existsSync, readdirSync, lstatSync, readFileSync, readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { CpioWriter, type CpioEntry } from './cpio.ts';
import { newest, parsePackages, type PackageStanza } from './debian.ts';
import { silentReporter, type Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { DEFAULT_LOCK_PATH, GUEST_ARCH, fetchIndex, guestCacheDir, isUnpacked, lockEntry, pkgDir, readLock, unpack, type LockedPackage } from './kit.ts';
import { debianMirror } from './sources.ts';

/**
 * Dependencies a running program does not need in an initramfs: they serve
 * the maintainer scripts (users, debconf questions, init integration) or are
 * provided by busybox. They are left out of the closure and reported.
 */
export const INSTALL_TIME_ONLY = new Set([
  'adduser', 'debconf', 'debconf-2.0', 'dpkg', 'init-system-helpers', 'lsb-base', 'sysvinit-utils', 'passwd', 'perl-base', 'base-files',
  'base-passwd', 'install-info', 'sensible-utils', 'libc-bin', 'usrmerge', 'usr-is-merged', 'systemd', 'systemd-sysv', 'procps', 'ucf',
]);

/** The first satisfiable alternative of each Depends: group, transitively; Provides: counts. */
export function resolveClosure(index: PackageStanza[], names: readonly string[]): { packages: PackageStanza[]; skipped: string[] } {
  const byName = new Map<string, PackageStanza>();
  const providers = new Map<string, string>();
  for (const p of index) {
    const cur = byName.get(p.Package);
    if (!cur) byName.set(p.Package, p);
    for (const v of p.Provides.split(',')) {
      const n = v.trim().split(/[\s(]/)[0];
      if (n && !providers.has(n)) providers.set(n, p.Package);
    }
  }
  const chosen = new Map<string, PackageStanza>();
  const skipped = new Set<string>();
  const queue = [...names];
  const realName = (n: string): string | null => (byName.has(n) ? n : providers.get(n) ?? null);
  while (queue.length > 0) {
    const n = queue.shift()!;
    if (chosen.has(n)) continue;
    const p = newest(index, n);
    chosen.set(n, p);
    for (const group of p.Depends.split(',')) {
      if (!group.trim()) continue;
      const alts = group.split('|').map((a) => a.trim().split(/[\s(:]/)[0]!);
      if (alts.some((a) => chosen.has(a) || chosen.has(realName(a) ?? ''))) continue;
      const usable = alts.find((a) => realName(a) !== null && !INSTALL_TIME_ONLY.has(a));
      if (usable === undefined) {
        if (alts.every((a) => INSTALL_TIME_ONLY.has(a))) for (const a of alts) skipped.add(a);
        else throw new GuestKitError('ERR_GUEST_RESOLVE', `${p.Package} depends on ${group.trim()}, which no package in the index provides`);
        continue;
      }
      queue.push(realName(usable)!);
    }
  }
  return { packages: [...chosen.values()], skipped: [...skipped].sort() };
}

/**
 * The lock entries for `names` and their closure, resolving (from the
 * archive's signed index) and writing the lock when one is missing; then
 * every entry downloaded, verified and unpacked.
 */
export async function ensureGuestPackages(names: readonly string[], reporter: Reporter, lockPath = DEFAULT_LOCK_PATH): Promise<LockedPackage[]> {
  const lock = readLock(lockPath);
  if (!lock) throw new GuestKitError('ERR_GUEST_LOCK', `${lockPath} not found; run \`pnpm guest fetch\` first`);
  const mirror = () => debianMirror();
  const missing = names.filter((n) => !lock.packages.some((p) => p.role === 'guest-package' && p.via === n));
  if (missing.length > 0) {
    reporter.info(`resolving ${missing.join(', ')} and their dependencies from the ${lock.suite} index`);
    const { text } = await fetchIndex(mirror(), join(guestCacheDir(), 'index'), reporter);
    const index = parsePackages(text).filter((p) => p.Architecture === GUEST_ARCH || p.Architecture === 'all');
    for (const n of missing) {
      if (!index.some((p) => p.Package === n)) throw new GuestKitError('ERR_GUEST_RESOLVE', await whyNotInIndex(n, mirror(), lock.suite));
      const { packages, skipped } = resolveClosure(index, [n]);
      for (const p of packages) lock.packages.push(lockEntry('guest-package', p, n));
      reporter.info(`${n}: ${packages.map((p) => `${p.Package} ${p.Version}`).join(', ')}${skipped.length ? ` (left out, install-time only: ${skipped.join(', ')})` : ''}`);
    }
    await writeFile(lockPath, `${JSON.stringify(lock, null, 2)}\n`);
    reporter.info(`wrote ${lockPath}`);
  }
  const entries = lock.packages.filter((p) => p.role === 'guest-package' && names.includes(p.via ?? ''));
  for (const p of entries) if (!isUnpacked(p)) await unpack(p, mirror(), reporter);
  return entries;
}

/**
 * Why `name` is not in trixie main for riscv64, in one line: it is in
 * another component the kit does not take packages from, or it exists only
 * for other architectures (looked up in amd64's index), or it is unknown.
 * The other indexes are fetched (and verified) only on this error path.
 */
export async function whyNotInIndex(name: string, mirror: string, suite: string): Promise<string> {
  const has = async (component: string, arch: string): Promise<boolean> => {
    try {
      const { text } = await fetchIndex(mirror, join(guestCacheDir(), 'index'), silentReporter, { component, arch });
      return new RegExp(`^Package: ${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm').test(text);
    } catch {
      return false;
    }
  };
  for (const component of ['contrib', 'non-free']) {
    if (await has(component, GUEST_ARCH)) return `package ${name} is in ${suite} ${component}, not main; the guest kit takes packages from main only`;
  }
  if (await has('main', 'amd64')) return `package ${name} has no ${GUEST_ARCH} build in ${suite} main (the archive builds it for amd64, not for ${GUEST_ARCH})`;
  return `package ${name} is not in Debian ${suite} (main, contrib, non-free) for ${GUEST_ARCH} or amd64: unknown package name`;
}

export interface TreeEntry {
  path: string;
  kind: 'dir' | 'file' | 'symlink';
  /** The entry in the unpacked package (the cache). */
  source: string;
  mode?: number;
  size?: number;
  target?: string;
}

/** Where a package's files go: appended to the initramfs (RAM) or onto an ext4 disk image. */
export type PackageTarget = 'initramfs' | 'image';

/**
 * What of an unpacked package is left out: in the initramfs all of
 * usr/share (documentation, manuals, locales; it costs guest RAM), on a
 * disk image only the documentation, manuals and locales (data some
 * programs read, e.g. iproute2's tables, stays).
 */
export function leftOut(rel: string, target: PackageTarget): boolean {
  if (target === 'initramfs') return rel === 'usr/share';
  return /^usr\/share\/(doc|doc-base|man|info|locale|lintian|bug)$/.test(rel);
}

/** The files, directories and symlinks of an unpacked package, in a stable order, minus what `target` leaves out. */
export function packageTreeEntries(p: LockedPackage, target: PackageTarget = 'initramfs'): TreeEntry[] {
  const root = join(pkgDir(p), 'tree');
  const out: TreeEntry[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const abs = join(dir, name);
      const rel = relative(root, abs);
      if (leftOut(rel, target)) continue;
      const st = lstatSync(abs);
      if (st.isSymbolicLink()) out.push({ path: rel, kind: 'symlink', target: readlinkSync(abs), source: abs });
      else if (st.isDirectory()) {
        out.push({ path: rel, kind: 'dir', mode: st.mode & 0o7777, source: abs });
        walk(abs);
      } else if (st.isFile()) out.push({ path: rel, kind: 'file', mode: st.mode & 0o7777, size: st.size, source: abs });
    }
  };
  if (existsSync(root)) walk(root);
  return out;
}

/**
 * One newc archive with the packages' files, appended to the base
 * initramfs (the kernel unpacks concatenated archives), so the cached base
 * stays as it is. The dynamic loader gets its /lib/ld-linux-* link (the
 * ELF interpreter path; Debian's usr-merged packages ship it under usr/lib).
 */
export function guestPackagesArchive(entries: readonly LockedPackage[]): Uint8Array {
  const w = new CpioWriter();
  const seen = new Set<string>();
  const add = (e: CpioEntry): void => {
    if (seen.has(e.path)) return;
    seen.add(e.path);
    w.add(e);
  };
  for (const p of entries) {
    for (const t of packageTreeEntries(p)) {
      if (t.kind === 'dir') add({ type: 'dir', path: t.path, mode: t.mode });
      else if (t.kind === 'symlink') add({ type: 'symlink', path: t.path, target: t.target! });
      else add({ type: 'file', path: t.path, data: readFileSync(t.source), mode: t.mode });
      const m = /^usr\/lib\/(ld-linux[^/]*)$/.exec(t.path);
      if (m) add({ type: 'symlink', path: `lib/${m[1]}`, target: `/usr/lib/${m[1]}` });
    }
  }
  return w.finish();
}
