import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts', 'packages/*/scripts/**/*.test.ts'],
          testTimeout: 60_000,
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['test/**/*.test.ts'],
          testTimeout: 900_000,
          hookTimeout: 900_000,
          // End-to-end tests boot whole guests; on a 2-core machine they run one file at a time.
          fileParallelism: false,
        },
      },
    ],
  },
});
