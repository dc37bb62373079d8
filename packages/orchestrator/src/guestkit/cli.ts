// `pnpm guest …`: fetch the Debian guest kit and build the initramfs.
import { copyFile, writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { argvErrorLine } from '@vmm/core';
import { stderrReporter } from './download.ts';
import { GuestKitError } from './errors.ts';
import { buildExecArchive, buildInitramfs, initrdWithExec } from './initramfs.ts';
import { ensureGuestPackages, guestPackagesArchive } from './packages.ts';
import { readFile } from 'node:fs/promises';
import { ensureGuestKit } from './kit.ts';
import { buildIommuKernel } from './kernel.ts';

const HELP = `usage: pnpm guest <command> [options]

Fetches Debian trixie riscv64 packages (kernel + modules, busybox-static,
OpenSBI) pinned in guest.lock.json, caches them under
\${XDG_CACHE_HOME:-~/.cache}/vmm/guest/, and builds the initramfs.

commands:
  fetch [--update]          download and unpack what the lock names
                            (--update: re-resolve from the archive, rewrite the lock)
  build [--exec CMD] [--package NAME]… [-o FILE]
                            build the initramfs (cached); print its path, or copy
                            it to FILE; with --exec, append the command archive;
                            --package adds a Debian riscv64 package and its Depends:
                            closure (pinned in guest.lock.json; needs -o FILE)
  paths                     print the kit's file paths as JSON (fetching if needed)
  kernel --iommu [--jobs N] [--force]
                            build the IOMMU guest kernel (Debian's linux-source-6.12 +
                            VIRTIO_IOMMU and IOMMU_DMA on riscv, guestkit/kernel/), cached
                            under \${XDG_CACHE_HOME:-~/.cache}/vmm/kernel/; print the Image path.
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
      package: { type: 'string', multiple: true },
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
      const kit = await ensureGuestKit({ reporter });
      const built = await buildInitramfs(kit);
      const pkgs = values.package ?? [];
      for (const n of pkgs) if (!/^[a-z0-9][a-z0-9+.-]+$/.test(n)) throw new UsageError(`--package ${JSON.stringify(n)}: not a Debian package name`);
      if (pkgs.length > 0) {
        if (!values.output) throw new UsageError('--package needs -o FILE');
        const parts = [await readFile(built.path), guestPackagesArchive(await ensureGuestPackages(pkgs, reporter))];
        if (values.exec !== undefined) parts.push(buildExecArchive(values.exec).archive);
        await writeFile(values.output, Buffer.concat(parts));
        process.stdout.write(`${values.output}\n`);
      } else if (values.exec !== undefined) {
        if (!values.output) throw new UsageError('--exec needs -o FILE');
        const x = await initrdWithExec(built.path, values.exec);
        await writeFile(values.output, x.initrd);
        process.stdout.write(`${values.output}\n`);
      } else if (values.output) {
        await copyFile(built.path, values.output);
        process.stdout.write(`${values.output}\n`);
      } else {
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
      const built = await buildIommuKernel({ reporter, ...(jobs ? { jobs } : {}), force: values.force === true });
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
