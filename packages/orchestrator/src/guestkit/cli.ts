// `pnpm guest …`: fetch the Debian guest kit and build the initramfs.
import { copyFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { argvErrorLine } from '@vmm/core';
import { stderrReporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { buildExecArchive, buildInitramfs } from './initramfs.ts';
import { buildPackagesImage, PACKAGES_LABEL, PACKAGES_MOUNT } from './image.ts';
import { ensureGuestPackages, guestPackagesArchive } from './packages.ts';
import { readFile } from 'node:fs/promises';
import { ensureGuestKit } from './kit.ts';
import { buildIommuKernel, verifyIommuKernel } from './kernel.ts';

const HELP = `usage: pnpm guest <command> [options]

Fetches Debian trixie riscv64 packages (kernel + modules, busybox-static,
OpenSBI) pinned in guest.lock.json, caches them under
\${XDG_CACHE_HOME:-~/.cache}/vmm/guest/, and builds the initramfs.

commands:
  fetch [--update]          download and unpack what the lock names
                            (--update: re-resolve from the archive, rewrite the lock)
  build [--exec CMD] [--package NAME]… [--ext4 IMAGE] [-o FILE]
                            build the initramfs (cached); print its path, or copy
                            it to FILE; with --exec, append the command archive;
                            --package adds a Debian riscv64 package and its Depends:
                            closure (pinned in guest.lock.json; needs -o FILE or --ext4)
                            --ext4 IMAGE: put the packages on an ext4 disk image
                            instead (mke2fs -d, no root needed; cached) written to
                            IMAGE; the guest's /init mounts it read-only at /packages
                            (label vmm-packages) and puts its programs on PATH:
                              pnpm guest build --package iperf3 --ext4 tools.img
                              pnpm vmm run --disk tools.img,readonly --exec 'iperf3 --version'
  paths                     print the kit's file paths as JSON (fetching if needed)
  kernel --iommu [--jobs N] [--force] [--verify]
                            build the IOMMU guest kernel (Debian's linux-source-6.12 +
                            VIRTIO_IOMMU and IOMMU_DMA on riscv, guestkit/kernel/), cached
                            under \${XDG_CACHE_HOME:-~/.cache}/vmm/kernel/; print the Image path.
                            Progress goes to stderr, a line every 10 s.
                            --verify: also build it a second time (another source path,
                            another build directory) and compare; prints "SHA256  PATH"
                            of both Images, exits 1 if they differ.
                            Needs gcc-riscv64-linux-gnu, flex, bison, bc (scripts/setup.sh)
  --help                    this text

The Debian mirror is read from /etc/apt/sources.list{,.d}; VMM_DEBIAN_MIRROR overrides it.
`;

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: {
      help: { type: 'boolean', short: 'h' },
      update: { type: 'boolean' },
      exec: { type: 'string' },
      output: { type: 'string', short: 'o' },
      iommu: { type: 'boolean' },
      jobs: { type: 'string', short: 'j' },
      force: { type: 'boolean' },
      verify: { type: 'boolean' },
      package: { type: 'string', multiple: true },
      ext4: { type: 'string' },
    },
  });
  const cmd = positionals[0];
  if (values.help || cmd === 'help') {
    process.stdout.write(HELP);
    return 0;
  }
  if (cmd === undefined) {
    process.stderr.write(HELP);
    return 2;
  }
  if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`);
  const reporter = stderrReporter();
  switch (cmd) {
    case 'fetch': {
      const kit = await ensureGuestKit({ update: values.update === true, reporter });
      reporter.info(`ready: kernel ${kit.kernelVersion} (${kit.packages.map((p) => `${p.name} ${p.version}`).join(', ')})`);
      return 0;
    }
    case 'build': {
      const pkgs = values.package ?? [];
      for (const n of pkgs) if (!/^[a-z0-9][a-z0-9+.-]+$/.test(n)) throw new UsageError(`--package ${JSON.stringify(n)}: not a Debian package name`);
      if (values.ext4 !== undefined && pkgs.length === 0) throw new UsageError('--ext4 needs at least one --package');
      if (!values.output && values.exec !== undefined) throw new UsageError('--exec needs -o FILE');
      if (!values.output && pkgs.length > 0 && values.ext4 === undefined) throw new UsageError('--package needs -o FILE (or --ext4 IMAGE)');
      const kit = await ensureGuestKit({ reporter });
      const built = await buildInitramfs(kit);
      const entries = pkgs.length > 0 ? await ensureGuestPackages(pkgs, reporter) : [];
      if (values.ext4 !== undefined) {
        // The packages go on the disk image; the initramfs (if asked for) stays the base one.
        const img = await buildPackagesImage(entries, reporter);
        await copyFile(img.path, values.ext4);
        reporter.info(`${img.cached ? 'cached' : 'built'}: ext4 image (label ${PACKAGES_LABEL}) with ${img.packages.join(', ')}; \`vmm run --disk ${values.ext4},readonly\` mounts it at ${PACKAGES_MOUNT}`);
        process.stdout.write(`${values.ext4}\n`);
      }
      const parts: Uint8Array[] = [];
      if (entries.length > 0 && values.ext4 === undefined) parts.push(guestPackagesArchive(entries));
      if (values.exec !== undefined) parts.push(buildExecArchive(values.exec).archive);
      if (parts.length > 0 && values.output) {
        await writeFile(values.output, Buffer.concat([await readFile(built.path), ...parts]));
        process.stdout.write(`${values.output}\n`);
      } else if (values.output) {
        await copyFile(built.path, values.output);
        process.stdout.write(`${values.output}\n`);
      } else if (values.ext4 === undefined) {
        process.stdout.write(`${built.path}\n`);
      }
      return 0;
    }
    case 'paths': {
      const kit = await ensureGuestKit({ reporter });
      const built = await buildInitramfs(kit);
      process.stdout.write(`${JSON.stringify({ ...kit, initramfs: built.path, modules: built.modules }, null, 2)}\n`);
      return 0;
    }
    case 'kernel': {
      if (!values.iommu) throw new UsageError('kernel: say which kernel to build: --iommu (the only custom kernel so far)');
      let jobs: number | undefined;
      if (values.jobs !== undefined) {
        jobs = Number(values.jobs);
        if (!Number.isInteger(jobs) || jobs < 1 || jobs > 256) throw new UsageError(`--jobs ${JSON.stringify(values.jobs)}: expected an integer from 1 to 256`);
      }
      const kopts = { reporter, ...(jobs ? { jobs } : {}), force: values.force === true };
      if (values.verify) {
        const v = await verifyIommuKernel(kopts);
        process.stdout.write(`${v.first.sha256}  ${v.first.image}\n${v.second.sha256}  ${v.second.image}\n`);
        if (v.identical) {
          reporter.info(`kernel: verify: the two builds are bit-identical (sha256 ${v.first.sha256})`);
          return 0;
        }
        const d = v.differences!;
        reporter.warn(`kernel: verify: the two builds differ: ${d.bytes} bytes, first at offset 0x${d.firstOffset.toString(16)}, sizes ${d.sizes[0]} and ${d.sizes[1]}; second Image kept at ${v.second.image}`);
        return 1;
      }
      const built = await buildIommuKernel(kopts);
      reporter.info(`${built.cached ? 'cached' : 'built'}: IOMMU kernel from linux-source-6.12 ${built.sourceVersion} (config ${built.config})`);
      process.stdout.write(`${built.image}\n`);
      return 0;
    }
    default:
      throw new UsageError(`unknown command ${JSON.stringify(cmd)}`);
  }
}

class UsageError extends Error {}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    const usage = e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS');
    const msg = e instanceof GuestKitError ? `${e.message} [${e.code}]` : usage ? `${argvErrorLine(e)} (pnpm guest --help)` : (e as Error).message;
    process.stderr.write(`guest: ${msg}\n`);
    process.exitCode = usage ? 2 : 1;
  },
);
