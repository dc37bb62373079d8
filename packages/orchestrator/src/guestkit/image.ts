// Guest packages on an ext4 disk image (`pnpm guest build --package iperf3
// --ext4 tools.img`): the packages' files (the same verified, unpacked
// trees the initramfs path uses) merged into one tree and written as ext4
// by `mke2fs -d` (e2fsprogs), so neither root nor a loop mount is needed.
// Cached in the guest cache by a hash of the packages; the guest's /init
// finds the disk by its label, mounts it read-only at /packages and puts
// its programs and libraries on PATH and LD_LIBRARY_PATH (INIT_SCRIPT).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, link, lstat, lutimes, mkdir, rename, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { Reporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { guestCacheDir, type LockedPackage } from './kit.ts';
import { packageTreeEntries, type TreeEntry } from './packages.ts';

const run = promisify(execFile);

/** The ext4 volume label /init looks for (at most 16 bytes: s_volume_name). */
export const PACKAGES_LABEL = 'vmm-packages';
/** Where /init mounts it in the guest. */
export const PACKAGES_MOUNT = '/packages';
/** The list of packages on the image, at its root. */
export const PACKAGES_MANIFEST = 'vmm-packages.txt';
/** Bumped when the image layout or the mke2fs options change. */
const IMAGE_BUILDER_VERSION = '1';
/** File system timestamps (E2FSPROGS_FAKE_TIME: superblock, root): 2025-01-01 00:00:00 UTC. */
const IMAGE_EPOCH = 1_735_689_600;

/** mke2fs lives in /usr/sbin, which a normal user's PATH on Debian lacks. */
function findMke2fs(): string {
  for (const d of [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin']) {
    if (d && existsSync(join(d, 'mke2fs'))) return join(d, 'mke2fs');
  }
  throw new GuestKitError('ERR_GUEST_TOOL', 'mke2fs not found on PATH, in /usr/sbin or /sbin (Debian package e2fsprogs; scripts/setup.sh installs it)');
}

/** One name-version per package, each once, sorted (the manifest and the cache key). */
function distinct(entries: readonly LockedPackage[]): LockedPackage[] {
  const m = new Map<string, LockedPackage>();
  for (const p of entries) m.set(`${p.name} ${p.version}`, p);
  return [...m.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** A UUID-shaped string from a hex digest (the image's UUID and directory hash seed, fixed per content). */
const uuidOf = (hex: string): string => `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;

export interface PackagesImage {
  path: string;
  packages: string[];
  cached: boolean;
}

/**
 * Builds (or finds in the cache) the ext4 image holding `entries` (lock
 * entries already unpacked: ensureGuestPackages). Nothing half-written is
 * ever left under the final name: the tree and the image are made beside
 * it and renamed into place, and removed on any failure.
 */
export async function buildPackagesImage(entries: readonly LockedPackage[], reporter: Reporter): Promise<PackagesImage> {
  const pkgs = distinct(entries);
  if (pkgs.length === 0) throw new GuestKitError('ERR_GUEST_RESOLVE', 'no packages to put on the image');
  const digest = createHash('sha256').update(JSON.stringify({ v: IMAGE_BUILDER_VERSION, pkgs: pkgs.map((p) => p.sha256) })).digest('hex');
  const dir = join(guestCacheDir(), 'images');
  const path = join(dir, `packages-${digest.slice(0, 20)}.ext4`);
  const names = pkgs.map((p) => `${p.name} ${p.version}`);
  if (existsSync(path)) return { path, packages: names, cached: true };

  const tmp = `${path}.tmp-${process.pid}`;
  const tree = `${tmp}.d`;
  try {
    await rm(tree, { recursive: true, force: true });
    await mkdir(tree, { recursive: true });
    // The packages' trees merged; a path shipped by two packages (Debian
    // policy forbids it without Replaces:) keeps the first one's in name
    // order, so the image does not depend on the order they were asked in. Files are hard links into
    // the cache (same file system) so nothing is copied twice.
    const seen = new Set<string>();
    const dirsAndLinks: TreeEntry[] = [];
    let bytes = 0;
    for (const p of pkgs) {
      for (const t of packageTreeEntries(p, 'image')) {
        if (seen.has(t.path)) continue;
        seen.add(t.path);
        if (t.kind !== 'file') dirsAndLinks.push(t);
        const dest = join(tree, t.path);
        if (t.kind === 'dir') {
          await mkdir(dest, { recursive: true, mode: t.mode });
          continue;
        }
        await mkdir(dirname(dest), { recursive: true });
        if (t.kind === 'symlink') await symlink(t.target!, dest);
        else {
          await link(t.source, dest).catch(() => copyFile(t.source, dest));
          bytes += Math.ceil((t.size ?? 0) / 4096) * 4096;
        }
      }
    }
    await writeFile(join(tree, PACKAGES_MANIFEST), `${names.join('\n')}\n`);
    // Modification times as the packages ship them (directories made here
    // would carry today's), the manifest and the root at IMAGE_EPOCH. (The
    // image is not bit-reproducible: mke2fs -d of e2fsprogs 1.47.0 copies
    // each file's ctime, which the hard link itself sets.)
    for (const t of dirsAndLinks) {
      const st = await lstat(t.source);
      await (t.kind === 'dir' ? utimes : lutimes)(join(tree, t.path), st.atime, st.mtime);
    }
    await utimes(join(tree, PACKAGES_MANIFEST), IMAGE_EPOCH, IMAGE_EPOCH);
    await utimes(tree, IMAGE_EPOCH, IMAGE_EPOCH);
    // Room for the data, one block per directory/symlink, the inode tables
    // (256 bytes each) and ext4's own metadata, with a margin.
    const inodes = seen.size + 64;
    const kib = Math.ceil((bytes + inodes * (4096 + 256)) / 1024 * 1.2) + 8 * 1024;
    const uuid = uuidOf(digest);
    // No journal: the guest mounts it read-only (several guests may share one copy).
    const args = ['-q', '-F', '-t', 'ext4', '-O', '^has_journal', '-b', '4096', '-N', String(inodes), '-m', '0', '-L', PACKAGES_LABEL, '-U', uuid,
      '-E', `root_owner=0:0,hash_seed=${uuid},nodiscard`, '-d', tree, tmp, `${kib}k`];
    reporter.info(`writing an ext4 image with ${pkgs.length} packages (${Math.round(bytes / 1024 / 1024)} MiB of files)`);
    try {
      await run(findMke2fs(), args, { env: { ...process.env, E2FSPROGS_FAKE_TIME: String(IMAGE_EPOCH), SOURCE_DATE_EPOCH: String(IMAGE_EPOCH) } });
    } catch (e) {
      const err = e as Error & { stderr?: string };
      if (err instanceof GuestKitError) throw err;
      throw new GuestKitError('ERR_GUEST_TOOL', `mke2fs ${args.join(' ')} failed: ${String(err.stderr || err.message).trim().split('\n').slice(-3).join(' / ')}`);
    }
    await rename(tmp, path);
    return { path, packages: names, cached: false };
  } finally {
    await rm(tree, { recursive: true, force: true });
    await rm(tmp, { force: true });
  }
}
