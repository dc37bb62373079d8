import js from '@eslint/js';
import tseslint from 'typescript-eslint';

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
    },
  },
);
