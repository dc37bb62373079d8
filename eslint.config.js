import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// House rules on imports (docs/orchestrator.md "Device kinds"): only core's FFI
// layer imports koffi; device packages never import the vCPU or the
// orchestrator; the orchestrator reaches a device package only through its
// registration entry (`@vmm/<kind>/kind`), never its main entry or internals.
const noKoffi = { name: 'koffi', message: 'Only packages/core/src/ffi.ts imports koffi (STYLE.md §10).' };
const notFromDevices = ['@vmm/vcpu', '@vmm/orchestrator'].map((name) => ({ name, message: 'A device package must not depend on the vCPU or the orchestrator.' }));
const deviceMains = ['@vmm/virtio-blk', '@vmm/virtio-net', '@vmm/iommu'].map((name) => ({ name, message: `The orchestrator imports a device package only through its registration entry (${name}/kind).` }));
const deepImports = { group: ['@vmm/*/src/*'], message: 'No deep imports across packages: use the package\'s exports.' };

export default tseslint.config(
  { ignores: ['**/node_modules/**', 'packages/vcpu/assembly/**', 'packages/vcpu/build/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Device and CPU code is full of deliberate bit twiddling and `while (true)` loops.
      'no-constant-condition': ['error', { checkLoops: false }],
      'no-bitwise': 'off',
      'no-restricted-imports': ['error', { paths: [noKoffi], patterns: [deepImports] }],
    },
  },
  { files: ['packages/core/src/ffi.ts'], rules: { 'no-restricted-imports': ['error', { patterns: [deepImports] }] } },
  { files: ['packages/virtio-*/**/*.ts', 'packages/iommu/**/*.ts'], rules: { 'no-restricted-imports': ['error', { paths: [noKoffi, ...notFromDevices], patterns: [deepImports] }] } },
  { files: ['packages/orchestrator/**/*.ts'], rules: { 'no-restricted-imports': ['error', { paths: [noKoffi, ...deviceMains], patterns: [deepImports] }] } },
);
