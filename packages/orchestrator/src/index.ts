export * from './guestkit/index.ts';
export { parseRunArgs, parseSize, kernelCmdline, UsageError, RUN_HELP, type RunOptions, type BiosChoice } from './cli/args.ts';
export { EscapeFilter, openConsole, parseConsoleSpec, type ConsoleSpec, type HostConsole } from './cli/console.ts';
export { runVm, RunError, type RunIo } from './cli/run.ts';
export * from './api/index.ts';
export * from './vm/index.ts';
